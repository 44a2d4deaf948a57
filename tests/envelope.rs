//! The envelope protocol (`/ws`, shardcast.v1.json / shardcast.v1.cbor) against a real daemon
//! with two shards, on both I/O drivers: encode-once per wire format, gapless seq across shards,
//! and raw ↔ envelope interop. (The op-by-op suite, with CBOR decoded by Python's cbor2, resume,
//! presence and the HTTP API, is tests/python/test_envelope.py.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{daemon, wait_until, Client};
use serde_json::{json, Value};

both_drivers!(
    encodes_once_per_wire_format,
    seq_is_gapless_and_ordered_across_shards,
    subscribe_answers_in_order_then_live,
    requests_while_a_subscribe_is_in_flight,
);

const JSON: &str = "Sec-WebSocket-Protocol: shardcast.v1.json\r\n";
const CBOR: &str = "Sec-WebSocket-Protocol: shardcast.v1.cbor\r\n";

/// An envelope client that decodes what it receives into JSON values (CBOR through ciborium).
struct Env {
    c: Client,
    cbor: bool,
    conn: u64,
}

impl Env {
    fn connect(addr: SocketAddr, cbor: bool) -> Env {
        let (c, head) = Client::connect_with(addr, "/ws", if cbor { CBOR } else { JSON });
        let want = if cbor {
            "shardcast.v1.cbor"
        } else {
            "shardcast.v1.json"
        };
        assert!(
            head.contains(&format!("Sec-WebSocket-Protocol: {want}")),
            "{head}"
        );
        let mut e = Env { c, cbor, conn: 0 };
        let w = e.recv();
        assert_eq!(w["op"], "welcome", "{w}");
        e.conn = w["conn"].as_u64().expect("conn id");
        e
    }

    fn shard(&self) -> u64 {
        self.conn & 1023
    }

    fn send(&mut self, v: Value) {
        if self.cbor {
            let mut out = Vec::new();
            ciborium::into_writer(&v, &mut out).unwrap();
            self.c.send_binary(&out);
        } else {
            self.c.send_text(&v.to_string());
        }
    }

    /// Send several frames in one write, so the daemon reads them together (before any answer
    /// from another shard can come in between).
    fn send_batch(&mut self, frames: &[Value]) {
        use std::io::Write;
        let mut bytes = Vec::new();
        for v in frames {
            assert!(!self.cbor, "JSON only");
            bytes.extend(shardcast::protocol::frame::encode_client_frame(
                true,
                shardcast::protocol::frame::OpCode::Text,
                common::MASK,
                v.to_string().as_bytes(),
            ));
        }
        self.c.stream.write_all(&bytes).unwrap();
    }

    fn recv(&mut self) -> Value {
        let f = self.c.recv().expect("a frame");
        if self.cbor {
            assert_eq!(f.opcode, 0x2, "CBOR frames are binary");
            let v: ciborium::Value = ciborium::from_reader(&f.payload[..]).expect("CBOR");
            serde_json::to_value(&v).expect("CBOR to JSON value")
        } else {
            assert_eq!(f.opcode, 0x1, "JSON frames are text");
            serde_json::from_slice(&f.payload).expect("JSON")
        }
    }

    fn subscribe(&mut self, room: &str) -> Value {
        self.send(json!({"op":"subscribe","room":room}));
        let s = self.recv();
        assert_eq!(s["op"], "subscribed", "{s}");
        s
    }
}

fn two_shard(driver: &str) -> shardcast::server::ServerHandle {
    daemon(driver, "[server]\nshards = 2\n")
}

/// Connect envelope clients until both shards have at least `per_shard`.
fn spread(addr: SocketAddr, cbor: bool, per_shard: usize) -> Vec<Env> {
    let mut out = Vec::new();
    let mut count = [0usize; 2];
    for _ in 0..per_shard * 20 {
        if count.iter().all(|&n| n >= per_shard) {
            break;
        }
        let e = Env::connect(addr, cbor);
        count[e.shard() as usize] += 1;
        out.push(e);
    }
    assert!(
        count.iter().all(|&n| n >= per_shard),
        "connections did not spread over both shards: {count:?}"
    );
    out
}

fn encodes_once_per_wire_format(driver: &str) {
    let d = two_shard(driver);
    let addr = d.local_addr();
    let mut json_clients = spread(addr, false, 50);
    let mut cbor_clients = spread(addr, true, 50);
    for e in json_clients.iter_mut().chain(cbor_clients.iter_mut()) {
        e.subscribe("enc");
    }
    let mut raws: Vec<Client> = (0..20).map(|_| Client::connect(addr, "/ws/enc")).collect();
    let before = d.stats().snapshot().envelope_encodings;
    json_clients[0].send(json!({"op":"publish","room":"enc","data":{"k":"v"}}));
    let from = json_clients[0].conn;
    for e in json_clients.iter_mut().chain(cbor_clients.iter_mut()) {
        let m = e.recv();
        assert_eq!(
            m,
            json!({"op":"message","room":"enc","seq":1,"from":from,"data":{"k":"v"}})
        );
    }
    for r in &mut raws {
        let f = r.recv().unwrap();
        assert_eq!(f.opcode, 0x1);
        let v: Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(v, json!({"k":"v"}));
    }
    let n = d.stats().snapshot().envelope_encodings - before;
    assert_eq!(
        n, 2,
        "one JSON and one CBOR serialization for 200 subscribers"
    );

    // A raw client's message: numbered, and serialized once per envelope format too.
    let before = d.stats().snapshot().envelope_encodings;
    raws[0].send_binary(&[0, 1, 2]);
    for e in json_clients.iter_mut() {
        let m = e.recv();
        assert_eq!(
            m,
            json!({"op":"message","room":"enc","seq":2,"from":null,"data":"AAEC","enc":"base64"})
        );
    }
    for e in cbor_clients.iter_mut() {
        let m = e.recv();
        assert_eq!(m["seq"], 2);
        assert_eq!(m["data"], json!([0, 1, 2]), "a CBOR byte string");
        assert!(m.get("enc").is_none());
    }
    for r in &mut raws {
        assert_eq!(r.recv().unwrap().payload, vec![0, 1, 2]);
    }
    assert_eq!(d.stats().snapshot().envelope_encodings - before, 2);
    d.stop().unwrap();
}

fn seq_is_gapless_and_ordered_across_shards(driver: &str) {
    let d = two_shard(driver);
    let addr = d.local_addr();
    let mut subs = spread(addr, false, 2);
    for s in &mut subs {
        s.subscribe("order");
    }
    // One publisher per shard, publishing at the same time.
    let mut pubs = spread(addr, true, 1);
    let p0 = pubs.iter().position(|p| p.shard() == 0).unwrap();
    let p1 = pubs.iter().position(|p| p.shard() == 1).unwrap();
    let mut a = pubs.swap_remove(p0.max(p1));
    let mut b = pubs.swap_remove(p0.min(p1));
    const N: u64 = 300;
    let ta = std::thread::spawn(move || {
        for i in 0..N {
            a.send(json!({"op":"publish","room":"order","data":{"p":"a","i":i}}));
        }
        a
    });
    let tb = std::thread::spawn(move || {
        for i in 0..N {
            b.send(json!({"op":"publish","room":"order","data":{"p":"b","i":i}}));
        }
        b
    });
    let _keep = (ta.join().unwrap(), tb.join().unwrap());
    let mut first: Option<Vec<Value>> = None;
    for s in &mut subs {
        let mut got = Vec::new();
        let mut next_i = [0u64; 2];
        for seq in 1..=2 * N {
            let m = s.recv();
            assert_eq!(m["op"], "message", "{m}");
            assert_eq!(m["seq"], seq, "gapless, in order");
            let p = usize::from(m["data"]["p"] == "b");
            assert_eq!(m["data"]["i"], next_i[p], "each publisher's order kept");
            next_i[p] += 1;
            got.push(m["data"].clone());
        }
        // Every subscriber, on either shard, saw the same order.
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got),
        }
    }
    d.stop().unwrap();
}

fn subscribe_answers_in_order_then_live(driver: &str) {
    let d = two_shard(driver);
    let addr = d.local_addr();
    let mut p = Env::connect(addr, false);
    for i in 0..5 {
        p.send(json!({"op":"publish","room":"live","data":i,"id":i}));
    }
    for i in 0..5 {
        let ack = p.recv();
        assert_eq!(ack, json!({"op":"ack","id":i,"seq":i + 1}));
    }
    let mut s = Env::connect(addr, true);
    let sub = s.subscribe("live");
    let epoch = sub["epoch"].as_u64().unwrap();
    assert_eq!(sub["seq"], 5);
    assert_eq!(
        sub["recovered"], false,
        "a fresh subscription recovers nothing"
    );
    p.send(json!({"op":"publish","room":"live","data":"after"}));
    let m = s.recv();
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(6), json!("after"))
    );
    // Resume from seq 2 on a new connection: 3..=6 replayed, then live.
    let mut r = Env::connect(addr, true);
    r.send(json!({"op":"subscribe","room":"live","since":2,"epoch":epoch}));
    let sub = r.recv();
    assert_eq!(sub["recovered"], true, "{sub}");
    for seq in 3..=6 {
        assert_eq!(r.recv()["seq"], seq);
    }
    p.send(json!({"op":"publish","room":"live","data":"live"}));
    assert_eq!(r.recv()["seq"], 7);
    wait_until(Duration::from_secs(5), "counts", || {
        d.stats().snapshot().connections == 3
    });
    d.stop().unwrap();
}

fn requests_while_a_subscribe_is_in_flight(driver: &str) {
    let d = two_shard(driver);
    let addr = d.local_addr();
    let mut c = Env::connect(addr, false);
    // A room whose home is the other shard, so the subscription's answer is in flight for a while.
    let room = (0..)
        .map(|i| format!("away-{i}"))
        .find(|r| shardcast::room::home::home_index(r, 2) as u64 != c.shard())
        .unwrap();
    // Pipelined, before any answer: subscribe, subscribe again, unsubscribe.
    c.send_batch(&[
        json!({"op":"subscribe","room":room}),
        json!({"op":"subscribe","room":room,"id":"dup"}),
        json!({"op":"unsubscribe","room":room,"id":"u"}),
    ]);
    let e = c.recv();
    assert_eq!(e["op"], "error", "{e}");
    assert_eq!(
        (e["code"].clone(), e["id"].clone()),
        (json!("already_subscribed"), json!("dup"))
    );
    assert_eq!(c.recv(), json!({"op":"unsubscribed","room":room,"id":"u"}));
    // The cancelled subscription never becomes live: no `subscribed`, no messages.
    let mut p = Env::connect(addr, true);
    p.send(json!({"op":"publish","room":room,"data":"x","id":1}));
    assert_eq!(p.recv()["op"], "ack");
    // The home answers in order: its answer to the subscribe was handled before this one.
    c.send(json!({"op":"history","room":room}));
    let h = c.recv();
    assert_eq!(
        h["op"], "history",
        "nothing of the cancelled subscription arrived: {h}"
    );
    // Subscribe, cancel, subscribe again, all in flight: the second one holds (and is listed).
    c.send_batch(&[
        json!({"op":"subscribe","room":room}),
        json!({"op":"unsubscribe","room":room}),
        json!({"op":"subscribe","room":room}),
    ]);
    assert_eq!(c.recv(), json!({"op":"unsubscribed","room":room}));
    let s = c.recv();
    assert_eq!(s["op"], "subscribed", "{s}");
    assert_eq!(s["seq"], 1);
    c.send(json!({"op":"presence","room":room}));
    let pres = c.recv();
    assert_eq!(
        pres["members"],
        json!([{"conn":c.conn,"info":null}]),
        "{pres}"
    );
    p.send(json!({"op":"publish","room":room,"data":"y"}));
    let m = c.recv();
    assert_eq!(
        (m["op"].clone(), m["seq"].clone()),
        (json!("message"), json!(2))
    );
    d.stop().unwrap();
}
