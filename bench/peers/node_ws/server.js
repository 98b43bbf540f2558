// Peer: Node's `ws`, the usual pick in Node. Subscribers kept in a Set; each
// published message is serialised once and sent with ws.send(text) to each.
// Compression off (as aiosrv's default).
//
//   node bench/peers/node_ws/server.js --port 18765
'use strict';
const { WebSocketServer } = require('ws');

const argv = process.argv.slice(2);
const opt = (name, dflt) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : dflt; };
const host = opt('--host', '127.0.0.1');
const port = Number(opt('--port', 18765));

const clients = new Set();
const seqs = Object.create(null);
const ack = (req, extra) => JSON.stringify({ type: 'ack', id: req.id ?? null, timestamp: Date.now(), payload: { action: req.action, ...extra } });

const wss = new WebSocketServer({ host, port, perMessageDeflate: false, backlog: 4096, maxPayload: 1 << 20 });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const req = JSON.parse(data);
    if (req.action === 'subscribe') {
      clients.add(ws);
      ws.send(ack(req, { types: req.payload.types }));
    } else if (req.action === 'publish') {
      const t = req.payload.type;
      const seq = seqs[t] = (seqs[t] || 0) + 1;
      const m = JSON.stringify({ id: `${t}:${seq}`, type: t, timestamp: Date.now(), seq, payload: req.payload.payload });
      for (const c of clients) c.send(m);
      ws.send(ack(req, { seq }));
    }
  });
  ws.on('close', () => clients.delete(ws));
  ws.on('error', () => clients.delete(ws));
});
wss.on('listening', () => console.log('ready'));
