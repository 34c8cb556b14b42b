"""The trainer side: the Atropos API client, drop rules, and the durable outbox. Ray-free."""
