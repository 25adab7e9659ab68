"""Small programs the relay tests run inside the lab namespaces (``python -c``)."""

CAPTURE = r"""
# Prints the first WireGuard data datagram (hex) seen toward the relay port on each interface.
import socket, struct, sys, time
port = int(sys.argv[1]); found = {}
socks = []
for ifname in sys.argv[2:]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((ifname, 0)); s.settimeout(0.2); socks.append((ifname, s))
deadline = time.monotonic() + 20
while time.monotonic() < deadline and len(found) < len(socks):
    for ifname, s in socks:
        if ifname in found:
            continue
        try:
            frame = s.recv(65535)
        except TimeoutError:
            continue
        ip = frame[14:]
        if ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        udp = ip[ihl:]
        if struct.unpack("!H", udp[2:4])[0] == port and udp[8] == 4 and len(udp) > 8 + 32:
            found[ifname] = udp[8:].hex()
print(" ".join(found.values()), flush=True)
"""

SPOOF = r"""
# 10,000 spoofed datagrams toward the relay port from many addresses of ours: initiations and
# responses with valid mac1, and replays of captured data carrying live receiver indices.
import hashlib, os, socket, sys, time
relay = (sys.argv[1], int(sys.argv[2]))
client_pub, node_pub = bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
sources = sys.argv[5].split(",")
captured = [bytes.fromhex(h) for h in sys.argv[6:]]
def mac1(pub, body):
    key = hashlib.blake2s(b"mac1----" + pub).digest()
    return hashlib.blake2s(body, digest_size=16, key=key).digest()
socks = []
for src in sources:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0)); socks.append(s)
sent = 0
for i in range(10000):
    kind = i % 4
    if kind == 0:
        body = b"\x01\0\0\0" + os.urandom(112)
        msg = body + mac1(node_pub, body) + bytes(16)
    elif kind == 1:
        body = b"\x02\0\0\0" + os.urandom(56)
        msg = body + mac1(client_pub, body) + bytes(16)
    else:
        msg = captured[i % len(captured)]
    socks[i % len(socks)].sendto(msg, relay)
    sent += 1
    if i % 200 == 199:
        time.sleep(0.005)
print(sent, flush=True)
"""

STORM = r"""
# The storm of test_udp_relay_storm.py: reads a count per line on stdin, sends that many more
# datagrams of the fixed rotation below, answers with how many it sent of each drop reason.
import hashlib, json, os, random, socket, sys
relay = (sys.argv[1], int(sys.argv[2]))
client_pub = bytes.fromhex(sys.argv[3])
sources = sys.argv[4].split(",")
captured = [bytes.fromhex(h) for h in sys.argv[5:]]
rng = random.Random(17)
def rand(n):
    return rng.randbytes(n)
def mac1(pub, body):
    key = hashlib.blake2s(b"mac1----" + pub).digest()
    return hashlib.blake2s(body, digest_size=16, key=key).digest()
def valid_response():
    # From the node side (mac1 for the client's key) to an initiation nobody sent.
    body = b"\x02\0\0\0" + rand(56)
    return body + mac1(client_pub, body) + bytes(16)
KINDS = [
    ("malformed", lambda: b""),
    ("malformed", lambda: bytes([rng.randrange(5, 256)]) + rand(rng.randrange(0, 1400))),
    ("malformed", lambda: b"\x01\0\0\0" + rand(rng.choice([0, 50, 143, 145, 400]))),
    ("malformed", lambda: b"\x04\x01\0\0" + rand(60)),
    ("malformed", lambda: b"\x03\0\0\0" + rand(61)),
    ("malformed", lambda: b"\x04\0\0\0" + rand(rng.randrange(0, 28))),
    ("malformed", lambda: b"\0" + rand(rng.randrange(1400, 8000))),
    ("bad_mac1", lambda: b"\x01\0\0\0" + rand(144)),
    ("bad_mac1", lambda: b"\x02\0\0\0" + rand(88)),
    ("unbound_source", lambda: rng.choice(captured)),
    ("unbound_source", lambda: b"\x04\0\0\0" + rand(rng.randrange(28, 1400))),
    ("unconfirmed", valid_response),
    ("unconfirmed", lambda: b"\x03\0\0\0" + rand(60)),
]
socks = []
for src in sources:
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        socks.append(s)
i = 0
for line in sys.stdin:
    counts = {}
    for _ in range(int(line)):
        reason, make = KINDS[i % len(KINDS)]
        socks[i % len(socks)].sendto(make(), relay)
        counts[reason] = counts.get(reason, 0) + 1
        i += 1
    print(json.dumps(counts), flush=True)
"""
