//! Store load generator for scripts/bench_launch.py: N client threads, each doing
//! OPS ADDs (one round trip each) against HOST:PORT; prints round trips/s.
//!
//! Usage: store_bench HOST PORT CLIENTS OPS

use std::time::{Duration, Instant};

use rrun::store::Client;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: store_bench HOST PORT CLIENTS OPS");
        std::process::exit(2);
    }
    let (host, port) = (a[1].clone(), a[2].parse::<u16>().expect("PORT"));
    let (clients, ops) = (
        a[3].parse::<usize>().expect("CLIENTS"),
        a[4].parse::<usize>().expect("OPS"),
    );
    let mut conns: Vec<Client> = (0..clients)
        .map(|_| {
            Client::connect(&host, port, Duration::from_secs(10), &mut |_| {}).expect("connect")
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, c) in conns.iter_mut().enumerate() {
            s.spawn(move || {
                for _ in 0..ops {
                    c.add(&format!("bench{i}"), 1).expect("add");
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!("{:.0}", (clients * ops) as f64 / secs);
}
