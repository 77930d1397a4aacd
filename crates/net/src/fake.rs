//! `FakeNetwork`: the books of a pod network and nothing else. Its records live in a `Disk`
//! that outlives the network, so that a test can "restart" it (`FakeNetwork::reopen`) the way
//! the real one rebuilds itself from its state directory.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::book::{Book, Record};
use crate::{Attachment, Cidr, NetError, PodNetwork};

/// Records that survive a restart of the fake.
pub type Disk = Arc<Mutex<BTreeMap<String, Record>>>;

pub struct FakeNetwork {
    book: Mutex<Book>,
    disk: Disk,
}

impl FakeNetwork {
    pub fn new(ranges: &[Cidr]) -> FakeNetwork {
        FakeNetwork::reopen(ranges, Disk::default())
    }

    /// A network rebuilt from the records a previous one left.
    pub fn reopen(ranges: &[Cidr], disk: Disk) -> FakeNetwork {
        let mut book = Book::new(ranges);
        let mut records = disk.lock().expect("fake disk");
        records.retain(|uid, r| book.restore(uid, r.clone()).is_ok());
        drop(records);
        FakeNetwork {
            book: Mutex::new(book),
            disk,
        }
    }

    pub fn disk(&self) -> Disk {
        self.disk.clone()
    }
}

#[async_trait]
impl PodNetwork for FakeNetwork {
    async fn attach(&self, pod: &Attachment<'_>) -> Result<Vec<IpAddr>, NetError> {
        let record = self
            .book
            .lock()
            .expect("fake book")
            .reserve(pod.uid, pod.host_ports)?;
        self.disk
            .lock()
            .expect("fake disk")
            .insert(pod.uid.to_string(), record.clone());
        Ok(record.ips)
    }

    async fn detach(&self, uid: &str) -> Result<(), NetError> {
        self.book.lock().expect("fake book").release(uid);
        self.disk.lock().expect("fake disk").remove(uid);
        Ok(())
    }

    fn attached(&self) -> Vec<String> {
        let book = self.book.lock().expect("fake book");
        book.pods().map(|(uid, _)| uid.clone()).collect()
    }

    fn addresses(&self, uid: &str) -> Option<Vec<IpAddr>> {
        let book = self.book.lock().expect("fake book");
        book.get(uid).map(|r| r.ips.clone())
    }

    fn ranges(&self) -> Vec<Cidr> {
        self.book.lock().expect("fake book").ranges()
    }
}
