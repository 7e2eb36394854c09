//! A separate process that increments a counter object by compare-and-swap, retrying on
//! conflict: `twill-cas-worker URL NAME COUNT`. The counter is a Profile whose label
//! `count` holds the number. Used by the datastore conformance suite.

use anyhow::{bail, Context};
use twill_shared::datastore::{connect, DatastoreError};
use twill_shared::resource::{Key, Kind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, name, count] = args.as_slice() else {
        bail!("usage: twill-cas-worker URL NAME COUNT");
    };
    let count: u32 = count.parse().context("COUNT is a number")?;
    let store = connect(url).await?;
    let key = Key::cluster(Kind::Profile, name);
    let mut conflicts = 0u32;
    for _ in 0..count {
        loop {
            let current = store.get(&key).await?.context("the counter exists")?;
            let value: u64 = current.value["metadata"]["labels"]["count"]
                .as_str()
                .and_then(|text| text.parse().ok())
                .context("the counter holds a number")?;
            let mut next = current.value.clone();
            next["metadata"]["labels"]["count"] =
                serde_json::Value::String((value + 1).to_string());
            match store.update(&key, next, current.revision).await {
                Ok(_) => break,
                Err(DatastoreError::Conflict { .. }) => conflicts += 1,
                Err(err) => return Err(err.into()),
            }
        }
    }
    println!("{conflicts}");
    Ok(())
}
