//! The `orcwire` command-line tool.

fn main() {
    println!("orcwire: the shared-memory demo arrives with the orcwire-shm transport; not yet.");
}
