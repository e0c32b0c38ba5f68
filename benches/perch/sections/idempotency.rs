//! Idempotency through the PostgreSQL inbox on against off, with durable
//! commits and with `synchronous_commit` off.

use crate::*;

pub(crate) async fn run(backends: &[Backend], s: &Sizes, rows: &mut Rows) {
    for b in [Backend::Memory, Backend::Rabbit] {
        if !backends.contains(&b) {
            continue;
        }
        let pg = PgStore::new();
        // Default leases (5 m), durable commits; then the same with
        // synchronous_commit off through the connection string.
        let store = pg.yaml("inbox").replace("value: 3s", "value: 5m");
        let lazy = store.replace(PG, &format!("{PG}?options=-c%20synchronous_commit%3Doff"));
        let off = drain(b, s.deliver, &[], false, None).await;
        let inbox = [("idempotencyStore", "inbox")];
        let on = drain(b, s.deliver, &inbox, false, Some(&store)).await;
        let on_lazy = drain(b, s.deliver, &inbox, false, Some(&lazy)).await;
        row(
            rows,
            format!(
                "idempotency {b:?}: store.postgresql on vs off, backlog of {} x 1 KiB, maxInFlight 64",
                s.deliver
            ),
            format!(
                "{:.0}/s; synchronous_commit off {:.0}/s",
                on.rate, on_lazy.rate
            ),
            format!("off {:.0}/s", off.rate),
            format!(
                "{:.2}x; synchronous_commit off {:.2}x",
                on.rate / off.rate,
                on_lazy.rate / off.rate
            ),
            format!(
                "CPU s per 10k: {:.2} on, {:.2} off",
                on.cpu_s * 10000.0 / s.deliver as f64,
                off.cpu_s * 10000.0 / s.deliver as f64
            ),
        );
        peer_lacks(rows, "the idempotencyStore (store.postgresql)");
    }
}
