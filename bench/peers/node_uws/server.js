// Peer: uWebSockets.js, native (the C++ uWebSockets/uSockets core as a Node
// addon), used the way its docs show for fan-out: every subscriber
// ws.subscribe(type); each published message is serialised once and sent with
// app.publish(type, text), uWebSockets' own pub/sub (framing and the writes
// to every subscriber run in C++). Compression off; a subscriber more than
// 1 MiB behind is closed (maxBackpressure 1 MiB, closeOnBackpressureLimit),
// like aiosrv's send_buffer_limit.
//
// uWebSockets.js is not published on npm by its authors (they ship it from
// GitHub); @trufflesuite/uws-js-unofficial republishes its v20.30.0 binaries
// (uws_<platform>_<arch>_<ABI>.node; ABI 115 = Node 20). Its JS loader
// (src/uws.js) silently falls back to a plain-JS implementation built on `ws`
// when the binary does not load, which would measure the wrong thing, so the
// binary is required directly here and a failure to load it is fatal.
//
//   node bench/peers/node_uws/server.js --port 18765
'use strict';
const path = require('path');

const pkg = path.dirname(require.resolve('@trufflesuite/uws-js-unofficial/package.json'));
const binary = path.join(pkg, 'binaries',
  `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
let uWS;
try {
  uWS = require(binary);
} catch (e) {
  console.error(`uWebSockets.js native binary does not load: ${binary}\n${e.stack || e}`);
  process.exit(3);
}
if (typeof uWS.App !== 'function' || typeof uWS.us_listen_socket_close !== 'function') {
  console.error(`${binary} is not the native uWebSockets.js addon`);
  process.exit(3);
}

const argv = process.argv.slice(2);
const opt = (name, dflt) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : dflt; };
const host = opt('--host', '127.0.0.1');
const port = Number(opt('--port', 18765));
if (argv.includes('--check')) { console.log(`native ${binary}`); process.exit(0); }

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
  sendPingsAutomatically: false,
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
  console.log(`ready (uWebSockets.js native: ${path.basename(binary)})`);
});
