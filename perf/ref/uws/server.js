'use strict';
// Reference broadcast server: uWebSockets.js with its native pub/sub.
// Contract (same as shardcast's raw rooms): connect to ws://HOST:PORT/ws/{room};
// every text/binary message is broadcast verbatim, same opcode, to every client
// in the room, sender included (app.publish, not ws.publish, which would skip
// the sender).  No permessage-deflate.  GET /healthz -> 200 ok.
//
// Usage: ../run-uws.sh PORT   (sets LD_PRELOAD for the glibc shim when needed)
//        node server.js PORT  (only on glibc >= 2.38)
// TLS: with TLS_CERT and TLS_KEY (PEM files) in the environment it serves wss:// and https://
// with uWS.SSLApp (uSockets' OpenSSL/BoringSSL), the same contract otherwise.
const fs = require('fs');

const port = Number(process.argv[2] || process.env.PORT);
const host = process.env.HOST || '127.0.0.1';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js PORT   (or set PORT)');
  process.exit(2);
}

// On glibc < 2.38 the addon's __isoc23_* symbols come from the LD_PRELOADed shim
// (see ../README.md).  Without it the process would die at the first call with
// "symbol lookup error", so refuse to start instead.
const glibc = process.report.getReport().header.glibcVersionRuntime || '';
const [maj, min] = glibc.split('.').map(Number);
if (glibc && (maj < 2 || (maj === 2 && min < 38)) &&
    !fs.readFileSync('/proc/self/maps', 'utf8').includes('libisoc23_shim')) {
  console.error(`glibc ${glibc} < 2.38 and the isoc23 shim is not loaded: ` +
                'start this server with perf/ref/run-uws.sh (after perf/ref/install.sh)');
  process.exit(1);
}

const uWS = require('@btc-vision/uwebsockets.js');

const ROOM_NAME = /^[A-Za-z0-9_.:-]{1,128}$/; // same room-name rule as shardcast

const tls = process.env.TLS_CERT && process.env.TLS_KEY;
const app = tls
  ? uWS.SSLApp({ cert_file_name: process.env.TLS_CERT, key_file_name: process.env.TLS_KEY })
  : uWS.App();

app.ws('/ws/:room', {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024 * 1024,
  maxBackpressure: 1024 * 1024, // = shardcast limits.max_buffered_bytes default
  closeOnBackpressureLimit: false, // over the limit, publish drops for that socket (~ slow_consumer = "drop")
  idleTimeout: 120, // seconds; with sendPingsAutomatically uWS pings quiet clients, ~ shardcast heartbeat
  sendPingsAutomatically: true,

  upgrade: (res, req, context) => {
    const room = req.getParameter(0);
    if (!ROOM_NAME.test(room)) {
      res.writeStatus('400 Bad Request').end();
      return;
    }
    res.upgrade(
      { room },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },

  open: (ws) => {
    ws.subscribe(ws.getUserData().room);
  },

  message: (ws, message, isBinary) => {
    // app.publish includes the sender (ws.publish would exclude it). It copies
    // `message`, which is only valid during this callback.
    app.publish(ws.getUserData().room, message, isBinary, false);
  },
});

app.get('/healthz', (res) => {
  res.writeHeader('content-type', 'text/plain').end('ok');
});

app.any('/*', (res) => {
  res.writeStatus('404 Not Found').end('not found');
});

app.listen(host, port, (token) => {
  if (!token) {
    console.error(`failed to listen on ${host}:${port}`);
    process.exit(1);
  }
  console.log(`listening on ${port}${tls ? ' (TLS)' : ''}`);
});
