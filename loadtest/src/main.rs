//! The bundled load generator: not built yet (it comes after the node).
//! It will drive `tributary::protocol::client::ClientSession` publishers and
//! players shaped by `tributary::synthetic`.

fn main() {
    eprintln!("tributary-loadtest: not built yet; see README.md");
    std::process::exit(2);
}
