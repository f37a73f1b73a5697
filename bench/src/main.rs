//! Ingress benchmark (placeholder; see the README "Benchmark" section).
#![forbid(unsafe_code)]

fn main() {
    println!("accessgate-bench: not written yet");
}
