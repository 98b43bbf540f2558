// Peer (optional): uWebSockets.js, used the way its docs show for fan-out:
// every subscriber ws.subscribe('bench'); each published message is
// serialised once and sent with app.publish(topic, text). Compression off;
// a subscriber more than 1 MiB behind is closed (maxBackpressure 1 MiB,
// closeOnBackpressureLimit), like aiosrv's send_buffer_limit.
//
// uWebSockets.js is not published on npm by its authors (they ship it from
// GitHub); this loads @btc-vision/uwebsockets.js, a third-party npm republish
// of the v20.57.0 binaries (uws_linux_x64_115.node for Node 20).
//
//   node bench/peers/node_uws/server.js --port 18765
'use strict';
const uWS = require('@btc-vision/uwebsockets.js');

const argv = process.argv.slice(2);
const opt = (name, dflt) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : dflt; };
const host = opt('--host', '127.0.0.1');
const port = Number(opt('--port', 18765));

const seqs = Object.create(null);
const dec = new TextDecoder();
const ack = (req, extra) => JSON.stringify({ type: 'ack', id: req.id ?? null, timestamp: Date.now(), payload: { action: req.action, ...extra } });

const app = uWS.App();
app.ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 1 << 20,
  maxBackpressure: 1 << 20,
  closeOnBackpressureLimit: true,
  idleTimeout: 0,
  message: (ws, message, isBinary) => {
    if (isBinary) return;
    const req = JSON.parse(dec.decode(message));
    if (req.action === 'subscribe') {
      for (const t of req.payload.types) ws.subscribe(t);
      ws.send(ack(req, { types: req.payload.types }));
    } else if (req.action === 'publish') {
      const t = req.payload.type;
      const seq = seqs[t] = (seqs[t] || 0) + 1;
      const m = JSON.stringify({ id: `${t}:${seq}`, type: t, timestamp: Date.now(), seq, payload: req.payload.payload });
      app.publish(t, m);
      ws.send(ack(req, { seq }));
    }
  },
});
app.listen(host, port, (token) => {
  if (!token) { console.error(`cannot listen on ${host}:${port}`); process.exit(1); }
  console.log('ready');
});
