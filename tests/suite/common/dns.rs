//! A DNS server for tests: answers A queries for the names a test sets, on a loopback
//! UDP port, with a TTL of one second; every address it hands out is 127.0.0.x. A name
//! set to fail answers SERVFAIL; one never set, NXDOMAIN.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

#[derive(Clone)]
enum Answer {
    Addresses(Vec<Ipv4Addr>),
    Fail,
}

pub struct TestDns {
    pub addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind(("127.0.0.1", super::floodgate::free_port()))
            .await
            .expect("bind the test DNS server");
        let addr = socket.local_addr().expect("local addr");
        let names: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let queries: Arc<Mutex<u64>> = Arc::default();
        let (table, count) = (names.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.authoritative = true;
                for q in &query.queries {
                    reply.add_query(q.clone());
                    let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
                    let answer = table
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&name)
                        .cloned();
                    match answer {
                        Some(Answer::Addresses(ips)) => {
                            if q.query_type() == RecordType::A {
                                for ip in ips {
                                    reply.add_answer(Record::from_rdata(
                                        q.name().clone(),
                                        1,
                                        RData::A(A(ip)),
                                    ));
                                }
                            }
                        }
                        Some(Answer::Fail) => reply.metadata.response_code = ResponseCode::ServFail,
                        None => reply.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                reply.metadata.message_type = MessageType::Response;
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TestDns {
            addr,
            names,
            queries,
            task,
        }
    }

    /// `name` resolves to `ips` (each a 127.0.0.x address) from now on.
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        assert!(
            ips.iter().all(|ip| ip.octets()[0] == 127),
            "test DNS names resolve to loopback only"
        );
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_lowercase(), Answer::Addresses(ips.to_vec()));
    }

    /// `name` answers SERVFAIL from now on.
    pub fn fail(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_lowercase(), Answer::Fail);
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        *self.queries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}
