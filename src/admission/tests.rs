use super::*;

fn limits() -> AdmissionLimits {
    AdmissionLimits::default()
}

fn key(s: &str) -> IpKey {
    IpKey::of(s.parse().unwrap())
}

fn holder(uid: u64) -> Holder {
    Holder {
        shard: ShardId(0),
        id: ConnId(uid as usize),
        uid,
    }
}

#[test]
fn per_ip_cap_counts_open_connections_and_releases_them() {
    let adm = Arc::new(Admission::default());
    let l = AdmissionLimits {
        max_connections_per_ip: Some(2),
        ..limits()
    };
    let a = adm.admit_ip(&l, key("127.0.0.2")).unwrap();
    let _b = adm.admit_ip(&l, key("127.0.0.2")).unwrap();
    assert_eq!(
        adm.admit_ip(&l, key("127.0.0.2")).unwrap_err(),
        Refusal::IpConnections
    );
    let _c = adm.admit_ip(&l, key("127.0.0.3")).expect("another address");
    assert_eq!(adm.connections_of(key("127.0.0.2")), 2);
    drop(a);
    assert_eq!(adm.connections_of(key("127.0.0.2")), 1);
    assert!(adm.admit_ip(&l, key("127.0.0.2")).is_ok(), "room again");
}

#[test]
fn ipv6_clients_share_their_64() {
    let adm = Arc::new(Admission::default());
    let l = AdmissionLimits {
        max_connections_per_ip: Some(1),
        ..limits()
    };
    let _a = adm.admit_ip(&l, key("2001:db8:0:1::1")).unwrap();
    assert!(adm.admit_ip(&l, key("2001:db8:0:1::2")).is_err());
    assert!(adm.admit_ip(&l, key("2001:db8:0:2::1")).is_ok());
}

#[test]
fn rates_refuse_with_the_wait() {
    let adm = Arc::new(Admission::default());
    let l = AdmissionLimits {
        handshakes_per_ip: Some(Rate {
            per_second: 1.0,
            burst: 2,
        }),
        ..limits()
    };
    let t: Vec<_> = (0..2)
        .map(|_| adm.admit_ip(&l, key("10.0.0.1")).unwrap())
        .collect();
    match adm.admit_ip(&l, key("10.0.0.1")) {
        Err(Refusal::IpRate { wait_ns }) => assert!(wait_ns > 0 && wait_ns <= 1_000_000_000),
        other => panic!("{other:?}"),
    }
    assert!(adm.admit_ip(&l, key("10.0.0.2")).is_ok(), "per IP");
    drop(t);
    let g = AdmissionLimits {
        handshakes: Some(Rate {
            per_second: 1.0,
            burst: 1,
        }),
        ..limits()
    };
    let _one = adm.admit_ip(&g, key("10.0.0.9")).unwrap();
    let r = adm.admit_ip(&g, key("10.0.0.8")).unwrap_err();
    assert!(matches!(r, Refusal::Rate { .. }));
    assert_eq!(r.status(), 503);
    assert_eq!(Refusal::IpConnections.status(), 429);
}

#[test]
fn a_global_refusal_does_not_use_the_ips_allowance() {
    let adm = Arc::new(Admission::default());
    let l = AdmissionLimits {
        max_connections_per_ip: Some(1),
        handshakes: Some(Rate {
            per_second: 0.001,
            burst: 1,
        }),
        ..limits()
    };
    let _first = adm.admit_ip(&l, key("10.0.0.1")).unwrap();
    assert!(matches!(
        adm.admit_ip(&l, key("10.0.0.2")),
        Err(Refusal::Rate { .. })
    ));
    assert_eq!(adm.connections_of(key("10.0.0.2")), 0);
}

#[test]
fn pending_handshakes_are_capped() {
    let adm = Arc::new(Admission::default());
    let l = AdmissionLimits {
        max_pending_handshakes: 2,
        ..limits()
    };
    let a = adm.begin_handshake(&l).unwrap();
    let _b = adm.begin_handshake(&l).unwrap();
    assert_eq!(adm.begin_handshake(&l).unwrap_err(), Refusal::Pending);
    assert_eq!(adm.pending(), 2, "a refused one is not left counted");
    drop(a);
    assert!(adm.begin_handshake(&l).is_ok());
}

#[test]
fn users_refuse_the_newest_or_close_the_oldest() {
    let adm = Arc::new(Admission::default());
    let ada: Arc<str> = Arc::from("ada");
    let mut l = AdmissionLimits {
        max_connections_per_user: Some(2),
        ..limits()
    };
    let (t1, _) = adm.admit_user(&l, &ada, holder(1)).unwrap();
    let (_t2, _) = adm.admit_user(&l, &ada, holder(2)).unwrap();
    assert_eq!(
        adm.admit_user(&l, &ada, holder(3)).unwrap_err(),
        Refusal::UserConnections
    );
    l.user_limit = UserLimit::CloseOldest;
    let (_t3, evict) = adm.admit_user(&l, &ada, holder(3)).unwrap();
    assert_eq!(evict, Some(holder(1)));
    drop(t1); // the evicted connection closes: nothing left of it to release
    let (_t4, evict) = adm.admit_user(&l, &ada, holder(4)).unwrap();
    assert_eq!(evict, Some(holder(2)));
}

#[test]
fn idle_entries_are_purged() {
    let adm = Arc::new(Admission::default());
    let l = AdmissionLimits {
        handshakes_per_ip: Some(Rate {
            per_second: 1e9,
            burst: 1,
        }),
        ..limits()
    };
    drop(adm.admit_ip(&l, key("10.0.0.1")).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(1));
    adm.purge();
    assert_eq!(adm.tracked_ips(), 0);
}
