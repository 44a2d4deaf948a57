'use strict';
// Reference cluster broadcast server: Node.js + `ws` + Redis pub/sub, the way the
// "scale WebSockets horizontally with Redis" articles build it. Run N of these (one per
// port) against one redis-server; a client may connect to any of them.
//
// Contract (same as node-ws/ and shardcast's raw rooms): connect to ws://HOST:PORT/ws/{room};
// every text/binary message is broadcast verbatim, same opcode, to every client in the room on
// EVERY node, sender included. No permessage-deflate. GET /healthz -> 200 ok.
//
// How: a client's message is PUBLISHed to the Redis channel `room:{name}` (one byte of opcode
// in front: 'b' binary, 't' text). Each node SUBSCRIBEs to `room:{name}` while it has local
// clients in that room (and UNSUBSCRIBEs when the last one leaves); a message from Redis goes to
// the room's local clients. The sender gets its message back through Redis like everyone else.
// Two Redis connections per node (ioredis): one in subscriber mode, one for PUBLISH.
//
// Usage: node server.js PORT   (REDIS_URL, default redis://127.0.0.1:6379; HOST 127.0.0.1)
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');
const Redis = require('ioredis');

const port = Number(process.argv[2] || process.env.PORT);
const host = process.env.HOST || '127.0.0.1';
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js PORT   (or set PORT; REDIS_URL for Redis)');
  process.exit(2);
}

const ROOM_PATH = /^\/ws\/([A-Za-z0-9_.:-]{1,128})$/; // same room-name rule as shardcast
const PREFIX = 'room:';
const BINARY = 0x62; // 'b'
const TEXT = 0x74; // 't'

const pub = new Redis(redisUrl);
const sub = new Redis(redisUrl);
pub.on('error', (e) => console.error(`redis pub: ${e.message}`));
sub.on('error', (e) => console.error(`redis sub: ${e.message}`));

/** @type {Map<string, Set<WebSocket>>} room name -> local sockets */
const rooms = new Map();

sub.on('messageBuffer', (channel, message) => {
  const room = rooms.get(channel.toString('latin1').slice(PREFIX.length));
  if (!room || message.length === 0) return;
  const isBinary = message[0] === BINARY;
  const data = message.subarray(1);
  for (const c of room) {
    if (c.readyState === WebSocket.OPEN) c.send(data, { binary: isBinary });
  }
});

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
  const roomName = m[1];
  let room = rooms.get(roomName);
  const upgrade = () =>
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req, roomName));
  if (room) {
    if (room.subscribing) room.subscribing.then(upgrade);
    else upgrade();
    return;
  }
  // First local client of the room: subscribe before completing the upgrade, so nothing
  // published after the client is connected is missed.
  room = new Set();
  rooms.set(roomName, room);
  room.subscribing = sub.subscribe(PREFIX + roomName).then(
    () => { room.subscribing = null; },
    (e) => { console.error(`subscribe ${roomName}: ${e.message}`); },
  );
  room.subscribing.then(upgrade);
});

wss.on('connection', (ws, req, roomName) => {
  let room = rooms.get(roomName);
  if (!room) {
    // The room emptied (and was unsubscribed) while this upgrade was completing.
    room = new Set();
    rooms.set(roomName, room);
    sub.subscribe(PREFIX + roomName).catch((e) => console.error(`subscribe: ${e.message}`));
  }
  room.add(ws);
  const channel = PREFIX + roomName;

  ws.on('message', (data, isBinary) => {
    const buf = Buffer.allocUnsafe(data.length + 1);
    buf[0] = isBinary ? BINARY : TEXT;
    data.copy(buf, 1);
    pub.publish(channel, buf);
  });

  ws.on('close', () => {
    room.delete(ws);
    if (room.size === 0 && rooms.get(roomName) === room && !room.subscribing) {
      rooms.delete(roomName);
      sub.unsubscribe(channel).catch(() => {});
    }
  });

  ws.on('error', () => {}); // 'close' follows; don't crash on a client's protocol error
});

server.listen(port, host, () => {
  console.log(`listening on ${port}`);
});
