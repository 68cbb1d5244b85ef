//! `caskade-server`: parses its configuration and runs one node.

fn main() {
    eprintln!("caskade-server: not built yet");
    std::process::exit(2);
}
