//! The shop's state, in components: items, carts, orders and counters; and `Api`, the
//! component every request is dispatched through, so a new route is a change to one
//! component, applied in place.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

/// Handles to the shop's components, passed with each request.
#[derive(Clone)]
pub struct Shop {
    pub items: dsu::Handle<Items>,
    pub carts: dsu::Handle<Carts>,
    pub orders: dsu::Handle<Orders>,
    pub counters: dsu::Handle<Counters>,
}

#[dsu::state]
pub struct Item {
    pub name: String,
    pub price_cents: u64,
    /// How many are in stock (0 for the items created before v3).
    pub stock: u64,
}

#[dsu::state]
#[derive(Default)]
pub struct Items {
    items: BTreeMap<u64, Item>,
    next: u64,
}

fn item_json(id: u64, item: &Item) -> Value {
    json!({ "id": id, "name": item.name, "price_cents": item.price_cents, "stock": item.stock })
}

#[dsu::component]
impl Items {
    pub async fn count(&self) -> usize {
        self.items.len()
    }

    pub async fn create(&mut self, name: String, price_cents: u64, stock: u64) -> Value {
        self.next += 1;
        let item = Item {
            name,
            price_cents,
            stock,
        };
        let out = item_json(self.next, &item);
        self.items.insert(self.next, item);
        out
    }

    pub async fn get(&self, id: u64) -> Option<Value> {
        self.items.get(&id).map(|i| item_json(id, i))
    }

    pub async fn list(&self) -> Vec<Value> {
        self.items.iter().map(|(id, i)| item_json(*id, i)).collect()
    }

    pub async fn price(&self, id: u64) -> Option<u64> {
        self.items.get(&id).map(|i| i.price_cents)
    }
}

#[dsu::state]
#[derive(Default)]
pub struct Carts {
    carts: HashMap<u64, Vec<u64>>,
}

#[dsu::component]
impl Carts {
    pub async fn count(&self) -> usize {
        self.carts.len()
    }

    pub async fn add(&mut self, cart: u64, item: u64) -> Vec<u64> {
        let items = self.carts.entry(cart).or_default();
        items.push(item);
        items.clone()
    }

    pub async fn items(&self, cart: u64) -> Vec<u64> {
        self.carts.get(&cart).cloned().unwrap_or_default()
    }

    pub async fn clear(&mut self, cart: u64) -> Vec<u64> {
        self.carts.remove(&cart).unwrap_or_default()
    }
}

#[dsu::state]
pub struct Order {
    pub cart: u64,
    pub items: Vec<u64>,
    pub total_cents: u64,
}

#[dsu::state]
#[derive(Default)]
pub struct Orders {
    orders: Vec<Order>,
}

#[dsu::component]
impl Orders {
    pub async fn place(&mut self, cart: u64, items: Vec<u64>, total_cents: u64) -> Value {
        self.orders.push(Order {
            cart,
            items,
            total_cents,
        });
        let id = self.orders.len() as u64;
        json!({ "id": id, "cart": cart, "total_cents": total_cents })
    }

    pub async fn get(&self, id: u64) -> Option<Value> {
        let o = self.orders.get((id as usize).checked_sub(1)?)?;
        Some(json!({ "id": id, "cart": o.cart, "items": o.items, "total_cents": o.total_cents }))
    }
}

#[dsu::state]
#[derive(Default)]
pub struct Counters {
    requests: u64,
    errors: u64,
    /// The background sweeper's runs, and what its last run found.
    sweeps: u64,
    report: String,
}

#[dsu::component]
impl Counters {
    pub async fn hit(&mut self, ok: bool) {
        self.requests += 1;
        if !ok {
            self.errors += 1;
        }
    }

    pub async fn swept(&mut self, report: String) {
        self.sweeps += 1;
        self.report = report;
    }

    pub async fn stats(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "sweeps": self.sweeps,
            "report": self.report,
        })
    }
}

/// The dispatcher: no state of its own.
#[dsu::state]
#[derive(Default)]
pub struct Api {}

fn reply(status: u16, body: Value) -> (u16, String) {
    (status, body.to_string())
}

fn not_found() -> (u16, String) {
    reply(404, json!({ "error": "not found" }))
}

fn bad_request(why: &str) -> (u16, String) {
    reply(400, json!({ "error": why }))
}

#[dsu::component]
impl Api {
    pub async fn version(&self) -> String {
        "v3".to_string()
    }

    /// One run of the background sweeper: what the catalog holds, into the counters.
    pub async fn sweep(&self, shop: Shop) {
        let items = shop.items.count().await;
        shop.counters.swept(format!("{items} items")).await;
    }

    /// Answers one request: `(status, JSON body)`.
    pub async fn handle(
        &self,
        shop: Shop,
        method: String,
        path: String,
        body: Vec<u8>,
    ) -> (u16, String) {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let id = |i: usize| segments.get(i).and_then(|s| s.parse::<u64>().ok());
        let json_body = || serde_json::from_slice::<Value>(&body).ok();
        let out = match (method.as_str(), segments.as_slice()) {
            ("GET", ["version"]) => reply(200, json!({ "version": "v3" })),
            ("GET", ["items"]) => reply(200, Value::from(shop.items.list().await)),
            ("POST", ["items"]) => match json_body() {
                Some(b) => match (b["name"].as_str(), b["price_cents"].as_u64()) {
                    (Some(name), Some(price)) => {
                        let stock = b["stock"].as_u64().unwrap_or(0);
                        reply(201, shop.items.create(name.to_string(), price, stock).await)
                    }
                    _ => bad_request("an item needs `name` and `price_cents`"),
                },
                None => bad_request("the body is not JSON"),
            },
            ("GET", ["items", _]) => match id(1) {
                Some(i) => shop
                    .items
                    .get(i)
                    .await
                    .map_or_else(not_found, |v| reply(200, v)),
                None => bad_request("an item id is a number"),
            },
            ("POST", ["carts", _, "items"]) => {
                let item = json_body().and_then(|b| b["item"].as_u64());
                match (id(1), item) {
                    (Some(cart), Some(item)) => match shop.items.price(item).await {
                        Some(_) => reply(
                            200,
                            json!({ "cart": cart, "items": shop.carts.add(cart, item).await }),
                        ),
                        None => not_found(),
                    },
                    _ => bad_request("POST /carts/ID/items takes {\"item\": ID}"),
                }
            }
            ("GET", ["carts", _]) => match id(1) {
                Some(cart) => reply(
                    200,
                    json!({ "cart": cart, "items": shop.carts.items(cart).await }),
                ),
                None => bad_request("a cart id is a number"),
            },
            ("POST", ["carts", _, "checkout"]) => match id(1) {
                Some(cart) => {
                    let items = shop.carts.clear(cart).await;
                    let mut total = 0;
                    for i in &items {
                        total += shop.items.price(*i).await.unwrap_or(0);
                    }
                    reply(201, shop.orders.place(cart, items, total).await)
                }
                None => bad_request("a cart id is a number"),
            },
            ("GET", ["orders", _]) => match id(1) {
                Some(o) => shop
                    .orders
                    .get(o)
                    .await
                    .map_or_else(not_found, |v| reply(200, v)),
                None => bad_request("an order id is a number"),
            },
            ("GET", ["stats"]) => reply(200, shop.counters.stats().await),
            _ => not_found(),
        };
        shop.counters.hit(out.0 < 400).await;
        out
    }
}
