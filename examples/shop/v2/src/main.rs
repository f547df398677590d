//! shop: an axum JSON HTTP service whose state lives in dsu components (items, carts, orders,
//! counters), updated live. Every request goes through the `Api` component, so a new route
//! needs no change to `main`.
//!
//! `shop --port PORT --socket PATH` prints `ready PORT` once it serves. Routes: `GET /items`,
//! `POST /items {"name", "price_cents"}`, `GET /items/ID`, `POST /carts/ID/items {"item"}`,
//! `GET /carts/ID`, `POST /carts/ID/checkout`, `GET /orders/ID`, `GET /stats`,
//! `GET /version`.
//!
//! It links tokio from dsu-shared (the `shared` feature) and serves through `dsu_hyper`, so a
//! hand-off passes its keep-alive connections to the new process between two requests.

mod shop;

use axum::body::Bytes;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;

use shop::{Api, Carts, Counters, Items, Orders, Shop};

async fn dispatch(
    api: dsu::Handle<Api>,
    shop: Shop,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> impl IntoResponse {
    let (status, body) = api
        .handle(
            shop,
            method.to_string(),
            uri.path().to_string(),
            body.to_vec(),
        )
        .await;
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}

/// A long-lived background task: one run of `Api::sweep` every 100 ms. Its loop body is a
/// component call, so after an update its next run is the new version's code. Between two runs
/// it sleeps counted as parked (`idle`): an update that needs every task parked (the hand-off)
/// does not wait for the sleep to end, and a run does not begin while such an update is
/// applied.
async fn sweeper(api: dsu::Handle<Api>, shop: Shop) {
    let task = dsu::register_task("sweeper");
    loop {
        api.sweep(shop.clone()).await;
        task.idle(tokio::time::sleep(std::time::Duration::from_millis(100)))
            .await;
    }
}

fn main() {
    let mut port = 0u16;
    let mut socket = String::from("shop.sock");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("--port PORT")
            }
            "--socket" => socket = args.next().expect("--socket PATH"),
            other => panic!("unknown argument `{other}`"),
        }
    }
    let rt = dsu::Runtime::builder()
        .program("shop")
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&socket)
        .start()
        .expect("start the dsu runtime");
    let shop = Shop {
        items: rt.register(Items::default()),
        carts: rt.register(Carts::default()),
        orders: rt.register(Orders::default()),
        counters: rt.register(Counters::default()),
    };
    let api = rt.register(Api::default());
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    tokio_rt.block_on(async move {
        let listener = dsu::listener("http", || std::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind the HTTP port");
        let port = listener.local_addr().expect("local address").port();
        let listener = listener.into_tokio().expect("a tokio listener");
        // After a hand-off: take the connections the old process passed on, then report
        // ready (the moment the hand-off commits).
        let handed = listener.handed_over().expect("the handed-over connections");
        rt.ready();
        tokio::spawn(sweeper(api.clone(), shop.clone()));
        let app = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            dispatch(api.clone(), shop.clone(), method, uri, body)
        });
        println!("ready {port}");
        dsu_hyper::serve(listener, handed, app)
            .await
            .expect("serve HTTP");
    });
}
