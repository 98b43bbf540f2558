// A peer for bench/: Node's `ws`. Subscribers on PORT (any text frame
// subscribes); POST /api/publish with a list on API_PORT sends each message to
// every subscriber with ws.send(JSON.stringify(m)).
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 18765);
const apiPort = Number(process.argv[3] || 18080);
const clients = new Set();
const seqs = {};

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, backlog: 4096 });
wss.on('connection', (ws) => {
  ws.on('message', () => clients.add(ws));
  ws.on('close', () => clients.delete(ws));
});

http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    const parsed = JSON.parse(body);
    const items = Array.isArray(parsed) ? parsed : [parsed];
    const out = [];
    for (const item of items) {
      const t = item.type;
      seqs[t] = (seqs[t] || 0) + 1;
      const m = JSON.stringify({ id: `${t}:${seqs[t]}`, type: t, timestamp: Date.now(), seq: seqs[t], payload: item.payload });
      for (const ws of clients) ws.send(m);
      out.push(seqs[t]);
    }
    res.writeHead(202, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ seq: out }));
  });
}).listen(apiPort, '127.0.0.1', () => console.log('ready'));
