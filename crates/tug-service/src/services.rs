//! Services: creating and listing them.

use super::*;

impl Tugboat {
    /// Creates a service; `false` if it existed already.
    pub async fn create_service(&self, who: &Principal, name: &ServiceName) -> Result<bool> {
        self.require(who, Action::ManageServices)?;
        let mut tx = self.db.begin().await?;
        if !tx.create_service(name, self.now()).await? {
            return Ok(false);
        }
        let event = self.event(Some(name), Some(events::actor(who)), Change::ServiceCreated {});
        self.commit(tx, &[event]).await?;
        Ok(true)
    }

    /// Every service the caller's scope covers.
    pub async fn list_services(&self, who: &Principal) -> Result<Vec<(ServiceName, DateTime<Utc>)>> {
        self.require(who, Action::Read)?;
        let mut services = self.db.list_services().await?;
        services.retain(|(s, _)| who.reader().in_scope(s));
        Ok(services)
    }
}
