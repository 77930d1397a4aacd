//! What a node's pod network has handed out: each pod's addresses and host ports. Pure; the
//! real network and the fake both keep their books here, and rebuild them from their records
//! after a restart.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ipam::Ipam;
use crate::{Cidr, HostPort, NetError, Protocol};

/// One connected pod, as recorded (the real network writes it to a file before touching the
/// kernel, so that a crash in between leaves something to clean up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub host_ports: Vec<HostPort>,
}

#[derive(Clone, Debug)]
pub struct Book {
    ipam: Ipam,
    pods: BTreeMap<String, Record>,
    ports: HashMap<(Protocol, u16), String>,
}

impl Book {
    pub fn new(ranges: &[Cidr]) -> Book {
        Book {
            ipam: Ipam::new(ranges),
            pods: BTreeMap::new(),
            ports: HashMap::new(),
        }
    }

    pub fn ranges(&self) -> Vec<Cidr> {
        self.ipam.ranges()
    }

    pub fn gateways(&self) -> Vec<IpAddr> {
        self.ipam.gateways()
    }

    pub fn get(&self, uid: &str) -> Option<&Record> {
        self.pods.get(uid)
    }

    pub fn pods(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.pods.iter()
    }

    /// Addresses and host ports for a new pod, all or nothing.
    pub fn reserve(&mut self, uid: &str, host_ports: &[HostPort]) -> Result<Record, NetError> {
        if let Some(r) = self.pods.get(uid) {
            return Ok(r.clone());
        }
        self.check_ports(uid, host_ports)?;
        let ips = self.ipam.allocate(uid)?;
        let record = Record {
            ips,
            host_ports: host_ports.to_vec(),
        };
        self.insert(uid, record.clone());
        Ok(record)
    }

    /// Take back a pod recorded before a restart.
    pub fn restore(&mut self, uid: &str, record: Record) -> Result<(), NetError> {
        self.check_ports(uid, &record.host_ports)?;
        self.ipam.restore(uid, &record.ips)?;
        self.insert(uid, record);
        Ok(())
    }

    /// Forget a pod; returns what it held.
    pub fn release(&mut self, uid: &str) -> Option<Record> {
        let record = self.pods.remove(uid)?;
        self.ipam.release(uid);
        for p in &record.host_ports {
            self.ports.remove(&(p.protocol, p.host_port));
        }
        Some(record)
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn check_ports(&self, uid: &str, host_ports: &[HostPort]) -> Result<(), NetError> {
        for p in host_ports {
            if let Some(owner) = self
                .ports
                .get(&(p.protocol, p.host_port))
                .filter(|o| *o != uid)
            {
                return Err(NetError::PortTaken {
                    port: p.host_port,
                    protocol: p.protocol,
                    owner: owner.clone(),
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, uid: &str, record: Record) {
        for p in &record.host_ports {
            self.ports
                .insert((p.protocol, p.host_port), uid.to_string());
        }
        self.pods.insert(uid.to_string(), record);
    }
}
