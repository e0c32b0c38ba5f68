//! Publishing: the confirm-mode channel of each connection, exchanges
//! declared once per channel, metadata mapped onto AMQP properties and
//! headers, and publisher confirms awaited (a negative confirm is an error).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

use super::{Inner, Live};
use crate::broker::{BrokerError, Message};
use crate::message::DEAD_LETTER_FROM;

/// AMQP's short-string limit, for names and most properties.
pub(super) const SHORT_MAX: usize = 255;

/// `s` as an AMQP short string, if it fits.
pub(super) fn short(s: &str) -> Option<ShortString> {
    (s.len() <= SHORT_MAX).then(|| ShortString::from(s))
}

/// A topic is an exchange name: at most 255 bytes, and not in the
/// `amq.` namespace RabbitMQ reserves.
pub(super) fn exchange_name(topic: &str) -> Result<(), String> {
    if topic.len() > SHORT_MAX {
        return Err(format!(
            "topic is {} bytes; a RabbitMQ exchange name is at most {SHORT_MAX} bytes",
            topic.len()
        ));
    }
    if topic.starts_with("amq.") {
        return Err(format!(
            "topic {topic:?}: exchange names starting with \"amq.\" are reserved by RabbitMQ"
        ));
    }
    Ok(())
}

impl Inner {
    pub(super) fn exchange_options(&self) -> ExchangeDeclareOptions {
        ExchangeDeclareOptions {
            durable: self.cfg.durable,
            auto_delete: self.cfg.auto_delete,
            ..Default::default()
        }
    }

    pub(super) fn exchange_kind(&self) -> ExchangeKind {
        match self.cfg.exchange_kind.as_str() {
            "topic" => ExchangeKind::Topic,
            "direct" => ExchangeKind::Direct,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Fanout,
        }
    }

    /// The publishing channel of `live` (confirm mode), made on first use
    /// or after a channel error.
    async fn publish_channel(&self, live: &Live) -> Result<Channel, BrokerError> {
        let mut slot = live.publish.lock().await;
        if let Some(ch) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = live
            .conn
            .create_channel()
            .await
            .map_err(|e| self.error(e))?;
        if self.cfg.publisher_confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| self.error(e))?;
        }
        // A new channel: exchanges are declared again through it.
        live.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        *slot = Some(ch.clone());
        Ok(ch)
    }

    async fn declare_exchange(
        &self,
        live: &Live,
        ch: &Channel,
        topic: &str,
    ) -> Result<(), BrokerError> {
        if live
            .declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(topic)
        {
            return Ok(());
        }
        super::topology::ensure_exchange(self, &live.conn, ch, topic)
            .await
            .map_err(|e| self.error(e))?;
        live.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_owned());
        Ok(())
    }

    /// The AMQP properties and headers of `msg`. Never panics: a header
    /// name or property value over AMQP's 255-byte short-string limit
    /// (which [`validate`] refuses at the publish API, but a consumed
    /// message being dead-lettered may carry) is left out.
    fn properties(&self, msg: &Message) -> BasicProperties {
        let md = &msg.metadata;
        let mut headers = FieldTable::default();
        for (k, v) in crate::broker::carried_metadata(md) {
            if let Some(k) = short(k) {
                headers.insert(k, AMQPValue::LongString(v.as_str().into()));
            }
        }
        let content_type = md
            .get("contentType")
            .cloned()
            .or_else(|| msg.content_type.clone())
            .filter(|c| c.len() <= SHORT_MAX)
            .unwrap_or_else(|| "text/plain".into());
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from(content_type.as_str()))
            .with_delivery_mode(self.cfg.delivery_mode)
            .with_headers(headers);
        // A dead letter never expires: the component's `ttlInSeconds` is
        // for what is published, not for what is kept for inspection.
        let ttl = crate::cloudevents::ttl_from_metadata(md)
            .or(self.cfg.ttl)
            .filter(|_| !md.contains_key(DEAD_LETTER_FROM));
        if let Some(ttl) = ttl {
            props = props.with_expiration(ShortString::from(ttl.as_millis().to_string().as_str()));
        }
        if let Some(p) = md.get("priority").and_then(|p| p.parse::<u8>().ok()) {
            props = props.with_priority(p);
        }
        if let Some(id) = md.get("messageID").and_then(|v| short(v)) {
            props = props.with_message_id(id);
        }
        if let Some(id) = md.get("correlationID").and_then(|v| short(v)) {
            props = props.with_correlation_id(id);
        }
        if let Some(t) = md.get("type").and_then(|v| short(v)) {
            props = props.with_type(t);
        }
        props
    }

    /// What this broker cannot carry, with the rule it breaks (see
    /// [`crate::broker::Broker::validate`]).
    pub(super) fn validate(&self, msg: &Message) -> Result<(), String> {
        exchange_name(&msg.topic)?;
        let md = &msg.metadata;
        for (k, _) in crate::broker::carried_metadata(md) {
            if k.len() > SHORT_MAX {
                return Err(format!(
                    "metadata key {:?}... is {} bytes; an AMQP header name is at most {SHORT_MAX} bytes",
                    k.chars().take(32).collect::<String>(),
                    k.len()
                ));
            }
        }
        for key in [
            "messageID",
            "correlationID",
            "type",
            "contentType",
            "routingKey",
        ] {
            if let Some(v) = md.get(key).filter(|v| v.len() > SHORT_MAX) {
                return Err(format!(
                    "metadata {key} is {} bytes; RabbitMQ carries it as an AMQP short string of at most {SHORT_MAX} bytes",
                    v.len()
                ));
            }
        }
        if let Some(ct) = msg.content_type.as_ref().filter(|c| c.len() > SHORT_MAX) {
            return Err(format!(
                "the content type is {} bytes; an AMQP content type is at most {SHORT_MAX} bytes",
                ct.len()
            ));
        }
        crate::broker::validate_metadata(msg)
    }

    /// Publishes one message; returns the pending confirm.
    pub(super) async fn send(&self, msg: &Message) -> Result<lapin::PublisherConfirm, BrokerError> {
        // Names over AMQP's limits would panic in the client library.
        exchange_name(&msg.topic).map_err(BrokerError::Rejected)?;
        if msg
            .metadata
            .get("routingKey")
            .is_some_and(|k| k.len() > SHORT_MAX)
        {
            return Err(BrokerError::Rejected(
                "routingKey is longer than 255 bytes".into(),
            ));
        }
        let live = self.connected().await?;
        let ch = self.publish_channel(&live).await?;
        self.declare_exchange(&live, &ch, &msg.topic).await?;
        let routing_key = msg.metadata.get("routingKey").cloned().unwrap_or_default();
        // A dead letter must reach a queue: published `mandatory`, so an
        // unroutable copy comes back and is an error (see `confirmed`), and
        // the original is not acked.
        let options = BasicPublishOptions {
            mandatory: msg.metadata.contains_key(DEAD_LETTER_FROM),
            ..Default::default()
        };
        ch.basic_publish(
            msg.topic.as_str().into(),
            routing_key.as_str().into(),
            options,
            &msg.data,
            self.properties(msg),
        )
        .await
        .map_err(|e| self.error(e))
    }

    pub(super) async fn confirmed(
        &self,
        pending: lapin::PublisherConfirm,
    ) -> Result<(), BrokerError> {
        match pending.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            // Confirmed but returned: a `mandatory` message no queue is
            // bound for. Trying again cannot route it.
            Ok(Confirmation::Ack(Some(_))) => Err(BrokerError::Rejected(format!(
                "rabbitmq pubsub {}: the message is unroutable (no queue is bound for its routing key)",
                self.name
            ))),
            Ok(Confirmation::Nack(_)) => Err(BrokerError::Unavailable(format!(
                "rabbitmq pubsub {}: the broker refused the message (negative confirm)",
                self.name
            ))),
            Err(e) => Err(self.error(e)),
        }
    }
}
