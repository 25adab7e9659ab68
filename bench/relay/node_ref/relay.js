// Reference relay on Node's `ws`: the same protocol and the same checks as the Higgs hub
// (Bearer token per link, version header, per-pair authorization by channel, records
// validated, frames forwarded unchanged), frame by frame as `ws` does it. Used only by
// bench/relay to measure the hub against it in the same run.
//
// usage: node relay.js PORT SESSIONS SESSIONS_PER_NODE   (prints "READY <port>")
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const sessions = Number(process.argv[3] || 1);
const perNode = Number(process.argv[4] || 10);

const nodeTokens = new Map();     // token -> node
const sessionTokens = new Map();  // token -> session
const nodes = [];
for (let j = 0; j < sessions; j++) {
  const n = Math.floor(j / perNode);
  if (!nodes[n]) {
    nodes[n] = { id: `n_${n}`, link: null, channels: new Map() };
    nodeTokens.set(`hgn_bench-node-${n}`, nodes[n]);
  }
  const s = { id: `s_${j}`, channel: j + 1, node: nodes[n], link: null };
  nodes[n].channels.set(s.channel, s);
  sessionTokens.set(`hgr_bench-session-${j}`, s);
}
const HIGH_WATER = 256 * 1024;
const drops = { malformed: 0, unknown_type: 0, wrong_channel: 0, no_peer: 0 };

function validate(buf) {
  const size = buf.length;
  if (size < 5 || size > 65535) return -1;
  if (buf[0] !== 1) return -2;
  let off = 5, count = 0;
  if (size === 5) return -1;
  while (off < size) {
    if (off + 2 > size) return -1;
    const len = (buf[off] << 8) | buf[off + 1];
    if (len === 0) return -1;
    off += 2 + len;
    count++;
  }
  return off === size ? count : -1;
}

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0];
  const auth = req.headers['authorization'] || '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7).trim() : '';
  let entity = null, kind = null;
  if (path === '/v1/relay/node') { entity = nodeTokens.get(token); kind = 'node'; }
  else if (path === '/v1/relay/session') { entity = sessionTokens.get(token); kind = 'session'; }
  else { socket.destroy(); return; }
  if (!entity) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (req.headers['higgs-relay-version'] !== '1') { ws.close(4004); return; }
    if (entity.link) entity.link.close(4003);
    entity.link = ws;
    ws.on('close', () => { if (entity.link === ws) entity.link = null; });
    if (kind === 'node') {
      ws.send(JSON.stringify({ type: 'hello', version: 1, node_id: entity.id, heartbeat_interval_s: 15 }));
      ws.on('message', (data, isBinary) => {
        if (!isBinary) return;
        const count = validate(data);
        if (count < 0) { drops[count === -2 ? 'unknown_type' : 'malformed']++; return; }
        const s = entity.channels.get(data.readUInt32BE(1));
        if (!s) { drops.wrong_channel++; return; }
        if (!s.link) { drops.no_peer++; return; }
        s.link.send(data, { binary: true });
      });
    } else {
      ws.send(JSON.stringify({ type: 'hello', version: 1, session_id: entity.id, channel: entity.channel }));
      ws.on('message', (data, isBinary) => {
        if (!isBinary) return;
        const count = validate(data);
        if (count < 0) { drops[count === -2 ? 'unknown_type' : 'malformed']++; return; }
        if (data.readUInt32BE(1) !== entity.channel) { drops.wrong_channel++; return; }
        const dest = entity.node.link;
        if (!dest) { drops.no_peer++; return; }
        dest.send(data, { binary: true });
        // Same backpressure as the hub: stop reading this client while the node is full.
        if (dest.bufferedAmount > HIGH_WATER && !ws._higgsPaused) {
          ws._higgsPaused = true;
          ws._socket.pause();
          dest._socket.once('drain', () => { ws._higgsPaused = false; ws._socket.resume(); });
        }
      });
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
