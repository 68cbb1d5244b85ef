//! `caskade-cli`: the REPL, one-shot commands and the load generator.

fn main() {
    eprintln!("caskade-cli: not built yet");
    std::process::exit(2);
}
