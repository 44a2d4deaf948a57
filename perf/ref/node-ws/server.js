'use strict';
// Reference broadcast server: Node.js + `ws`, written the way tutorials do it.
// Contract (same as shardcast's raw rooms): connect to ws://HOST:PORT/ws/{room};
// every text/binary message is broadcast verbatim, same opcode, to every client
// in the room, sender included.  No permessage-deflate.  GET /healthz -> 200 ok.
//
// Usage: node server.js PORT      (or PORT=... node server.js; HOST defaults to 127.0.0.1)
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || process.env.PORT);
const host = process.env.HOST || '127.0.0.1';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js PORT   (or set PORT)');
  process.exit(2);
}

const ROOM_PATH = /^\/ws\/([A-Za-z0-9_.:-]{1,128})$/; // same room-name rule as shardcast

/** @type {Map<string, Set<WebSocket>>} room name -> sockets */
const rooms = new Map();

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
});

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: 16 * 1024 * 1024,
});

server.on('upgrade', (req, socket, head) => {
  const m = ROOM_PATH.exec(req.url);
  if (!m) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req, m[1]));
});

wss.on('connection', (ws, req, roomName) => {
  let room = rooms.get(roomName);
  if (!room) {
    room = new Set();
    rooms.set(roomName, room);
  }
  room.add(ws);

  ws.on('message', (data, isBinary) => {
    for (const c of room) {
      if (c.readyState === WebSocket.OPEN) c.send(data, { binary: isBinary });
    }
  });

  ws.on('close', () => {
    room.delete(ws);
    if (room.size === 0 && rooms.get(roomName) === room) rooms.delete(roomName);
  });

  ws.on('error', () => {}); // 'close' follows; don't crash on a client's protocol error
});

server.listen(port, host, () => {
  console.log(`listening on ${port}`);
});
