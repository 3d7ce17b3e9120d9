//! The `tributary` binary. The node (shards, hub, admin HTTP) is the next
//! piece of work; until it lands the binary states that plainly rather than
//! pretending to serve.

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("-V") => println!("tributary {version}"),
        _ => {
            eprintln!("tributary {version}: the RTMP protocol core is built; the node is not yet (see README.md)");
            std::process::exit(2);
        }
    }
}
