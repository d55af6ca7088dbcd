//! The `inorder` binary (placeholder until the server issue).
fn main() {
    eprintln!("inorder: the server arrives with the server issue; see README.md");
}
