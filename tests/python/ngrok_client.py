"""Drives `sluice serve` with the official ngrok Python client (ngrok-api on
PyPI), unchanged: a full create / list / get / update / delete cycle of event
destinations, subscriptions and sources, paging, and errors.

Usage: python ngrok_client.py BASE_URL API_KEY
"""
import sys
import types

import ngrok
from ngrok.datatypes import EventSourceReplace

base_url, api_key = sys.argv[1], sys.argv[2]
client = ngrok.Client(api_key, base_url=base_url)  # no trailing slash


def raw(props):
    # ngrok.datatypes.EventTarget(...) cannot be serialized by the client
    # itself (spec §9.3); any object with a plain `_props` dict works.
    return types.SimpleNamespace(_props=props)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


kinesis = {"kinesis": {"auth": {"role": {"role_arn": "arn:aws:iam::123456789012:role/example"}},
                       "stream_arn": "arn:aws:kinesis:us-east-2:123456789012:stream/mystream"}}

# Event Destinations
dest = client.event_destinations.create(
    description="kinesis dev stream", metadata='{"environment":"dev"}', format="json", target=raw(kinesis))
check(dest.id.startswith("ed_"), "create destination")
check(dest.target.kinesis.stream_arn == kinesis["kinesis"]["stream_arn"], "target round-trips")
check(dest.target.kinesis.auth.role.role_arn == "arn:aws:iam::123456789012:role/example", "auth role round-trips")
check(dest.target.datadog is None and dest.target.firehose is None, "unused targets are null")
got = client.event_destinations.get(dest.id)
check(got.id == dest.id and got.description == "kinesis dev stream", "get destination")
# create() with defaults sends format "" : accepted as json.
d2 = client.event_destinations.create(target=raw({"datadog": {"api_key": "secret-key", "ddsite": "datadoghq.eu"}}))
check(d2.format == "json", "empty format means json")
check(d2.target.datadog.api_key == "", "datadog api_key is redacted")
upd = client.event_destinations.update(dest.id, description="renamed")
check(upd.description == "renamed" and upd.metadata == '{"environment":"dev"}', "update destination (partial)")
upd = client.event_destinations.update(dest.id, metadata="")
check(upd.metadata == "", "update with an empty string clears")
extra = [client.event_destinations.create(description=f"page {i}", target=raw(kinesis)) for i in range(5)]
listed = [d.id for d in client.event_destinations.list(limit="2")]  # follows next_page_uri
expected = [d.id for d in reversed([dest, d2] + extra)]
check(listed == expected, f"list pages through all {len(expected)} destinations newest first")
filtered = [d.description for d in client.event_destinations.list(filter='obj.description == "page 3"')]
check(filtered == ["page 3"], "list with a filter")

# Event Subscriptions
sub = client.event_subscriptions.create(
    description="ip policy creations",
    sources=[EventSourceReplace(None, {"type": "ip_policy_created.v0"})],
    destination_ids=[dest.id])
check(sub.id.startswith("esb_"), "create subscription")
check([s.type for s in sub.sources] == ["ip_policy_created.v0"], "sources round-trip")
check([r.id for r in sub.destinations] == [dest.id], "destinations round-trip")
sub = client.event_subscriptions.get(sub.id)
check(sub.description == "ip policy creations", "get subscription")
sub = client.event_subscriptions.update(sub.id, description="new")  # also sends "sources": []
check(sub.description == "new" and [s.type for s in sub.sources] == ["ip_policy_created.v0"],
      "update subscription keeps sources when the client sends []")
check(any(s.id == sub.id for s in client.event_subscriptions.list()), "list subscriptions")

# Event Sources
src = client.event_sources.create(sub.id, type="ip_policy_updated.v0")
check(src.type == "ip_policy_updated.v0", "create source")
check(client.event_sources.get(sub.id, "ip_policy_updated.v0").type == "ip_policy_updated.v0", "get source")
check(sorted(s.type for s in client.event_sources.list(sub.id).sources) == ["ip_policy_created.v0", "ip_policy_updated.v0"],
      "list sources")
check(client.event_sources.update(sub.id, "ip_policy_updated.v0").type == "ip_policy_updated.v0",
      "update source (PATCH without a body)")
client.event_sources.delete(sub.id, "ip_policy_updated.v0")
check([s.type for s in client.event_sources.list(sub.id).sources] == ["ip_policy_created.v0"], "delete source")

# Errors
try:
    client.event_destinations.delete(dest.id)
    check(False, "deleting a destination in use fails")
except ngrok.Error as e:
    check(e.error_code == "ERR_NGROK_5112" and e.http_status_code == 400, "deleting a destination in use fails")
client.event_subscriptions.delete(sub.id)
client.event_destinations.delete(dest.id)
try:
    client.event_destinations.get(dest.id)
    check(False, "a deleted destination is not found")
except ngrok.NotFoundError as e:
    check(e.error_code == "ERR_NGROK_5103" and e.operation_id.startswith("op_"), "a deleted destination is not found")
try:
    client.event_subscriptions.create(sources=[EventSourceReplace(None, {"type": "nope.v0"})])
    check(False, "an unknown event type is refused")
except ngrok.Error as e:
    check(e.error_code == "ERR_NGROK_238", "an unknown event type is refused")
try:
    ngrok.Client("not-a-key", base_url=base_url).event_destinations.list().event_destinations
    check(False, "a bad key is refused")
except ngrok.Error as e:
    check(e.http_status_code == 401, "a bad key is refused")

print("all checks passed")
