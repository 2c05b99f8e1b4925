//! The test bed itself: its servers count exactly what they receive, and its namespaces are
//! gone after a drop, including one caused by a panic.

use std::net::SocketAddr;

use xdpcopy_testbed::{
    bare_xdp::{Action, BareXdp},
    servers::{LineServer, Nginx, Redis},
    topology::{addr, iface},
    traffic, Host, Testbed,
};

fn namespaces() -> String {
    String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .into_owned()
}

#[test]
fn servers_count_exactly_what_they_receive() {
    let tb = Testbed::new().unwrap();
    let http = SocketAddr::new(addr::TARGET.into(), 8080);
    let redis_addr = SocketAddr::new(addr::TARGET.into(), 6379);
    let line = SocketAddr::new(addr::TARGET.into(), 9000);
    let nginx = Nginx::start(&tb, Host::Target, "nginx", http).unwrap();
    let redis = Redis::start(&tb, Host::Target, "redis", redis_addr).unwrap();
    let server = LineServer::start(&tb, Host::Target, "line", line).unwrap();

    // The online host reaches the test server directly, as the copier will.
    tb.online
        .run(move || (0..3).try_for_each(|i| traffic::http_get(http, &format!("/p/{i}")).map(drop)))
        .unwrap()
        .unwrap();
    assert_eq!(nginx.requests(), ["GET /p/0 HTTP/1.1", "GET /p/1 HTTP/1.1", "GET /p/2 HTTP/1.1"]);

    for key in ["a", "b"] {
        tb.online.exec("redis-cli", &["-h", &addr::TARGET.to_string(), "-p", "6379", "set", key, "1"]).unwrap();
    }
    assert_eq!(redis.commands_processed(&tb).unwrap(), 2);

    let lines = vec!["one".to_owned(), "two".to_owned()];
    tb.online.run(move || traffic::line_requests(line, &lines)).unwrap().unwrap();
    assert_eq!(server.requests(), ["one", "two"]);
}

#[test]
fn the_client_network_routes_through_the_assistant_host() {
    let tb = Testbed::new().unwrap();
    let route = tb.target.ip(&["route", "get", &addr::CLIENT.to_string()]).unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains(&format!("via {}", addr::ASSIST)), "{route}");
}

#[test]
fn namespaces_are_deleted_on_drop_and_on_panic() {
    let names = {
        let tb = Testbed::new().unwrap();
        [tb.client.name().to_owned(), tb.assist().name().to_owned()]
    };
    let listed = namespaces();
    assert!(names.iter().all(|n| !listed.contains(n.as_str())), "left behind: {listed}");

    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let tb = Testbed::new().unwrap();
        tx.send(tb.online.name().to_owned()).unwrap();
        panic!("a test failing half-way");
    })
    .join();
    assert!(panicked.is_err());
    let name = rx.recv().unwrap();
    assert!(!namespaces().contains(&name), "{name} survived the panic");
}

#[test]
fn a_bare_xdp_program_passes_or_drops_everything_until_it_is_dropped() {
    let tb = Testbed::new().unwrap();
    let http = SocketAddr::new(addr::TARGET.into(), 8080);
    let nginx = Nginx::start(&tb, Host::Target, "nginx", http).unwrap();
    let get = |path: &'static str| tb.online.run(move || traffic::http_get(http, path)).unwrap();

    let pass = BareXdp::attach(&tb.target, iface::TARGET_TO_ONLINE, Action::Pass).unwrap();
    assert!(tb.target.xdp_program(iface::TARGET_TO_ONLINE).unwrap().is_some());
    assert_eq!(get("/through-pass").unwrap(), 200);
    drop(pass);
    // A process another test forks in that moment holds a copy of the link's descriptor until
    // it execs: the program goes when the last copy closes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while tb.target.xdp_program(iface::TARGET_TO_ONLINE).unwrap().is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(tb.target.xdp_program(iface::TARGET_TO_ONLINE).unwrap(), None, "detached with its link");

    let drop_all = BareXdp::attach(&tb.target, iface::TARGET_TO_ONLINE, Action::Drop).unwrap();
    assert!(get("/through-drop").is_err(), "nothing reaches the server");
    drop(drop_all);
    assert_eq!(get("/after").unwrap(), 200);
    assert_eq!(nginx.requests(), ["GET /through-pass HTTP/1.1", "GET /after HTTP/1.1"]);
}
