//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the files of
//! sql/migrations at compile time, and cargo would not otherwise notice them.
fn main() {
    println!("cargo:rerun-if-changed=../sql/migrations");
}
