#!/usr/bin/env bash
# End-to-end throughput of `sluice run` on pre-generated NDJSON into the
# blackhole sink. Usage: benches/scripts/e2e.sh [events] [runs]
# Writes inputs and configs under ${WORK:-/tmp/sluice-e2e}.
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${1:-2000000}
RUNS=${2:-3}
WORK=${WORK:-/tmp/sluice-e2e}
mkdir -p "$WORK"
cargo build --release --workspace --quiet
S=./target/release/sluice
FILTER='ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500'

# filter-5pct: one account, one subscription keeping 5% of ~740-byte HTTP events.
[ -f "$WORK/one-account.ndjson" ] || $S gen --events "$EVENTS" --size 650 --accounts 1 --audit-share 0 --tcp-share 0 --prod-share 0.5 --error-share 0.1 --out "$WORK/one-account.ndjson"
ACCT=$(head -c 400 "$WORK/one-account.ndjson" | grep -o '"account_id":"[^"]*"' | head -1 | cut -d'"' -f4)
cat > "$WORK/filter-5pct.toml" <<TOML
[[destination]]
id = "ed_bh"
kind = "blackhole"
[[subscription]]
id = "esb_5pct"
account_id = "$ACCT"
destination_ids = ["ed_bh"]
  [[subscription.source]]
  type = "http_request_complete.v0"
  filter = '$FILTER'
TOML

# many-tenants: 1,000 accounts x 10 subscriptions (the 5% HTTP filter, a TCP
# filter, 8 audit types), events spread over the accounts (Zipf).
[ -f "$WORK/many-accounts.ndjson" ] || $S gen --events "$EVENTS" --size 650 --accounts 1000 --prod-share 0.5 --error-share 0.1 --out "$WORK/many-accounts.ndjson"
python3 - "$WORK" "$FILTER" <<'PY'
import json, sys
work, flt = sys.argv[1], sys.argv[2]
accts, seen = [], set()
with open(f"{work}/many-accounts.ndjson") as f:
    for line in f:
        a = json.loads(line)["account_id"]
        if a not in seen:
            seen.add(a); accts.append(a)
        if len(accts) == 1000: break
audit = ["ip_policy_created.v0","ip_policy_updated.v0","ip_policy_deleted.v0","api_key_created.v0","api_key_deleted.v0","domain_created.v0","domain_deleted.v0","tls_certificate_created.v0"]
out = ['[[destination]]\nid = "ed_bh"\nkind = "blackhole"\n']
def sub(i, a, t, fl=None):
    s = f'[[subscription]]\nid = "esb_{i}"\naccount_id = "{a}"\ndestination_ids = ["ed_bh"]\n  [[subscription.source]]\n  type = "{t}"\n'
    return s + (f"  filter = '{fl}'\n" if fl else "")
n = 0
for a in accts:
    out.append(sub(n, a, "http_request_complete.v0", flt)); n += 1
    out.append(sub(n, a, "tcp_connection_closed.v0", "ev.conn.bytes_out > 50000000")); n += 1
    for t in audit:
        out.append(sub(n, a, t)); n += 1
open(f"{work}/many-tenants.toml", "w").write("\n".join(out))
PY

for scenario in filter-5pct:one-account many-tenants:many-accounts; do
  name=${scenario%%:*}; input=${scenario##*:}
  for i in $(seq "$RUNS"); do
    printf '%-14s ' "$name"
    $S run --config "$WORK/$name.toml" --input "$WORK/$input.ndjson" 2>&1 | sed 's/^sluice: //'
  done
done
