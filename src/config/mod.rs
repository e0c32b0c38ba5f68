//! Configuration: Dapr-format YAML (`Component`, `Subscription` v1alpha1 and
//! v2alpha1, `Resiliency`) read from every `*.yaml`/`*.yml` in the resources
//! paths. Loading collects every problem (file, document, field) before
//! failing, so one run of `perch validate` shows them all.
//!
//! Values are read from YAML trees rather than serde structs so that each
//! problem can name its exact field, and one bad field does not hide the next.

pub mod component;
pub mod load;
pub mod options;
pub mod resiliency;
pub mod scopes;
pub mod subscription;
pub mod value;

pub use crate::report::{ConfigReport, Problem};
pub use component::{DeliveryOrder, PubsubComponent};
pub use load::{load, Resources};
pub use options::LoadOptions;
pub use subscription::{BulkSubscribe, Route, SubscriptionSource, SubscriptionSpec};
