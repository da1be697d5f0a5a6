//! The routing engine: rules kept in PostgreSQL (sipstack_route, seen by
//! Kamailio's dialplan module through the sipstack_dialplan view), changed at run
//! time and reloaded without restarting Kamailio.

use std::time::Duration;

use sipstack_db::route::{MatchKind, NewRoute, Target};
use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand, SippOutcome};
use sipstack_e2e::testbed::{
    answered_by, call_number, phone, register_phone, standin, users, PoolSpec, Testbed,
    TestbedSpec, DOMAIN, EDGE_IP,
};

/// One authenticated call from alice to `number`.
async fn call(tb: &Testbed, number: &str) -> SippOutcome {
    call_number(tb.edge(), "alice", "alice-pw", number)
        .await
        .unwrap()
}

fn route(name: &str, priority: i32, kind: MatchKind, value: &str, target: Target) -> NewRoute {
    NewRoute {
        name: name.into(),
        priority,
        match_kind: kind,
        match_value: value.into(),
        source_domain: None,
        source: Default::default(),
        target,
        service: None,
        description: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_database_take_effect_on_reload() {
    let (a, _sa) = standin(0).unwrap();
    let (b, _sb) = standin(1).unwrap();
    let (gw, _sg) = standin(2).unwrap();
    let spec = TestbedSpec {
        pools: vec![
            PoolSpec::new("media", 1, "roundRobin").member(a, 1, 0),
            PoolSpec::new("premium", 2, "roundRobin").member(b, 1, 0),
        ],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    tb.add_subscriber("7001", "desk-pw").await.unwrap();

    // no rule yet: everything goes to the default pool
    let out = call(&tb, "9001234").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(a.to_string()));

    let db = tb.db().await.unwrap();
    for r in [
        route(
            "block-premium",
            10,
            MatchKind::Prefix,
            "900",
            Target::Reject {
                code: 403,
                reason: "Premium Blocked".into(),
            },
        ),
        route(
            "hotline",
            10,
            MatchKind::Exact,
            "5000",
            Target::Pool("premium".into()),
        ),
        route(
            "desk-phones",
            20,
            MatchKind::Regex,
            "^7[0-9]{3}$",
            Target::User,
        ),
        route(
            "uk-carrier",
            30,
            MatchKind::Prefix,
            "+44",
            Target::Uri(format!("sip:carrier@{gw}")),
        ),
        // overlapping rules: the lower priority number wins, not the longer prefix
        route(
            "fives-to-media",
            40,
            MatchKind::Prefix,
            "55",
            Target::Pool("media".into()),
        ),
        route(
            "fives-busy",
            50,
            MatchKind::Prefix,
            "555",
            Target::Reject {
                code: 486,
                reason: "Busy Here".into(),
            },
        ),
        route(
            "sixes-busy",
            60,
            MatchKind::Prefix,
            "666",
            Target::Reject {
                code: 486,
                reason: "Busy Here".into(),
            },
        ),
        route(
            "sixes-to-premium",
            70,
            MatchKind::Prefix,
            "66",
            Target::Pool("premium".into()),
        ),
    ] {
        sipstack_db::route::add(&db, &r).await.unwrap();
    }

    // written but not reloaded: Kamailio still routes by the old rules
    let out = call(&tb, "9001234").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(a.to_string()));

    tb.reload_routes().await.unwrap();

    // reject with the rule's code
    let out = call(&tb, "9001234").await;
    assert_eq!(out.successful(), 0);
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());

    // exact match to another pool; a longer number does not match it
    let out = call(&tb, "5000").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(b.to_string()));
    let out = call(&tb, "50001").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(
        answered_by(&out),
        Some(a.to_string()),
        "50001 falls through to the default pool"
    );

    // external URI (the '+' of the prefix is matched literally)
    let out = call(&tb, "+441234567").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(gw.to_string()));
    let out = call(&tb, "4412345").await;
    assert_eq!(
        answered_by(&out),
        Some(a.to_string()),
        "without '+' the carrier rule does not match"
    );

    // priority decides between overlapping rules
    let out = call(&tb, "5551").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(
        answered_by(&out),
        Some(a.to_string()),
        "priority 40 (55 → media) beats priority 50 (555 → busy)"
    );
    let out = call(&tb, "6661").await;
    assert_eq!(
        out.unexpected_codes,
        vec![486],
        "priority 60 (666 → busy) beats priority 70 (66 → premium)"
    );

    // a registered user, by regex
    let phone_port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(tb.edge(), "7001", "desk-pw", phone_port)
        .await
        .unwrap();
    let phone = phone(phone_port).unwrap();
    let out = call(&tb, "7001").await;
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(20)));
    assert_eq!(phone.stop().unwrap().lines("RECEIVED").count(), 1);
    // a number the regex matches but nobody registered
    let out = call(&tb, "7002").await;
    assert_eq!(out.unexpected_codes, vec![404], "{}", out.diagnostics());

    // deleting a rule and reloading brings the default back
    sipstack_db::route::delete(&db, "block-premium")
        .await
        .unwrap();
    tb.reload_routes().await.unwrap();
    let out = call(&tb, "9001234").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(a.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_of_a_source_domain_apply_only_to_its_callers() {
    let (a, _sa) = standin(0).unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(a, 1, 0)],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    let db = tb.db().await.unwrap();
    let mut ours = route(
        "ours-no-intl",
        10,
        MatchKind::Prefix,
        "00",
        Target::Reject {
            code: 403,
            reason: "No International".into(),
        },
    );
    ours.source_domain = Some(DOMAIN.to_uppercase());
    let mut theirs = route(
        "theirs-busy",
        5,
        MatchKind::Prefix,
        "8",
        Target::Reject {
            code: 486,
            reason: "Busy Here".into(),
        },
    );
    theirs.source_domain = Some("other.example.org".into());
    for r in [
        ours,
        theirs,
        route(
            "everyone-8",
            20,
            MatchKind::Prefix,
            "8",
            Target::Pool("media".into()),
        ),
    ] {
        sipstack_db::route::add(&db, &r).await.unwrap();
    }
    tb.reload_routes().await.unwrap();

    // alice is in example.com: its own rule applies, the other domain's does not
    let out = call(&tb, "0049301234").await;
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());
    let out = call(&tb, "812").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(a.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rule_and_no_default_pool_is_404() {
    let (a, _sa) = standin(0).unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(a, 1, 0)],
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    let out = call(&tb, "12345").await;
    assert_eq!(out.unexpected_codes, vec![404], "{}", out.diagnostics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_cancelled_at_the_media_node() {
    let ip = sipstack_e2e::testbed::media_ip(0);
    let port = sipstack_e2e::sipp::free_udp_port_on(ip).unwrap();
    let ringing = SippCommand::scenario("uas_ringing")
        .local(ip, port)
        .deadline(Duration::from_secs(60))
        .spawn()
        .unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(
            std::net::SocketAddr::new(ip, port),
            1,
            0,
        )],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    let out = SippCommand::scenario("uac_cancel")
        .remote(tb.edge())
        .service("12345")
        .injection(InjectionFile::users(&users(&[("alice", "alice-pw")])))
        .max_calls(3)
        .deadline(Duration::from_secs(20))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(3)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(20)));
    assert_eq!(out.lines("CANCELLED").count(), 3);
    let node = ringing.stop().unwrap();
    assert_eq!(
        node.lines("CANCEL_RECEIVED").count(),
        3,
        "the CANCEL went through the edge to the node"
    );
}
