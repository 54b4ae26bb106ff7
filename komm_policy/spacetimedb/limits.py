"""The bounds of one subscription message (`SubscriptionClient`'s `max_message_bytes`, the
`[directory] max_message_bytes` option): one owner for the default and the range, imported
by the configuration without the WebSocket library."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""The largest subscription message accepted by default (the WebSocket library's
`max_size`): a larger one drops the connection (close code 1009) with a reason naming the
limit and is counted (`komm_directory_oversized_messages_total`).  SpacetimeDB sets no limit of
its own: an `InitialSubscription` holds whole tables, a transaction all its rows.  At ~55
bytes a row (an address table) 128 MiB is about 2.4 million rows, whose table the replica
would keep in about 2.5 GB; what one message costs beyond the table it builds is two to
three times its size (the frame as received and as text, a slice object a row until the
row is read)."""

MESSAGE_BYTES_MIN = 1024 * 1024
"""The smallest cap the option takes (1 MiB, the WebSocket library's own default): below it
an ordinary snapshot is refused on every reconnect, and a value like `128` is a unit
mistake (meant as MiB) better refused at start."""

MESSAGE_BYTES_MAX = 4 * 1024 * 1024 * 1024
"""The largest cap the option takes (4 GiB: about 78 million 55-byte rows, a replica of
some 80 GB; beyond it a typing mistake)."""
