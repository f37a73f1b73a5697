#!/usr/bin/env python3
"""Checks infra/ without the Bicep compiler (not installable here): every .bicep file parses
(pycep-parser), the resources, identities, role assignments and app settings the app needs are
there, every ACCESSGATE_* app setting is one `accessgate check-config` accepts, the queues the
functions bind to exist, and the Function App package has the layout the host needs (the
executable bit kept).

Usage: tools/check-infra.py ACCESSGATE_BINARY
Exit 1 with every problem listed, 0 when all hold.
"""

import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pycep import BicepParser

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


def parse_all():
    parser = BicepParser()
    parsed = {}
    for f in sorted(INFRA.rglob("*.bicep")):
        try:
            parsed[f.relative_to(INFRA).as_posix()] = parser.parse(text=f.read_text())
        except Exception as e:  # pycep raises lark errors of several kinds
            problems.append(f"{f.relative_to(ROOT)} does not parse: {str(e).splitlines()[0]}")
    return parsed


def resources(doc, rtype):
    return [
        (name, r)
        for name, r in (doc.get("resources") or {}).items()
        if r.get("type") == rtype
    ]


def structure(p):
    main = p.get("main.bicep", {})
    check(main.get("globals", {}).get("target_scope") == "subscription"
          or "targetScope = 'subscription'" in (INFRA / "main.bicep").read_text(),
          "main.bicep: targetScope is not subscription (azd up from an empty subscription)")
    for out in ["ACCESSGATE_URL", "ACCESSGATE_PRINCIPAL_ID", "ACCESSGATE_LOGIC_APP_RESOURCE_ID",
                "ACCESSGATE_KEY_VAULT_URL", "ACCESSGATE_FUNCTION_APP_NAME", "AZURE_TENANT_ID"]:
        check(out in (main.get("outputs") or {}), f"main.bicep: output {out} (read by accessgate setup) is missing")

    st = p.get("modules/storage.bicep", {})
    acct = resources(st, "Microsoft.Storage/storageAccounts")
    check(len(acct) == 1, "storage.bicep: one storage account")
    if acct:
        props = acct[0][1]["config"]["properties"]
        check(props.get("allowSharedKeyAccess") is False, "storage: shared key access must be off (identity-based host storage)")
        check(props.get("allowBlobPublicAccess") is False, "storage: public blob access must be off")
        check(props.get("minimumTlsVersion") == "TLS1_2", "storage: TLS 1.2 minimum")
    queues = {r["config"]["name"] for _, r in resources(st, "Microsoft.Storage/storageAccounts/queueServices/queues")}
    tables = {r["config"]["name"] for _, r in resources(st, "Microsoft.Storage/storageAccounts/tableServices/tables")}
    containers = {r["config"]["name"] for _, r in resources(st, "Microsoft.Storage/storageAccounts/blobServices/containers")}
    # Every queue a function binds to exists.
    for fj in sorted((ROOT / "function-app").glob("*/function.json")):
        for b in json.loads(fj.read_text())["bindings"]:
            if b.get("type") in ("queue", "queueTrigger"):
                check(b["queueName"] in queues, f"{fj.relative_to(ROOT)}: queue {b['queueName']} is not created by storage.bicep")
                check(b.get("connection") == "AzureWebJobsStorage", f"{fj.relative_to(ROOT)}: binds to {b.get('connection')}, not the host storage")
            if b.get("type") == "blob":
                check(b["path"].split("/")[0] in containers, f"{fj.relative_to(ROOT)}: container of {b['path']} is not created")
    check("accessgatewaits" in tables, "storage: the wait table accessgatewaits (queue.wait_table) is missing")
    check("deployments" in containers, "storage: the deployment container is missing")

    fn = p.get("modules/function.bicep", {})
    sites = resources(fn, "Microsoft.Web/sites")
    check(len(sites) == 1, "function.bicep: one site")
    if sites:
        c = sites[0][1]["config"]
        check(c.get("kind") == "functionapp,linux", "site: kind functionapp,linux")
        check(c.get("identity", {}).get("type") == "SystemAssigned", "site: system-assigned managed identity")
        check(c["properties"].get("httpsOnly") is True, "site: HTTPS only")
        fac = json.dumps(c["properties"].get("functionAppConfig"))
        check('"runtime": {"name": "custom"' in fac, "site: Flex runtime custom")
        check('"alwaysReady": [{"name": "http"' in fac, "site: always-ready instances for the http group")
        check('"type": "SystemAssignedIdentity"' in fac, "site: Flex deployment storage reached with the identity")
    plans = json.dumps(resources(fn, "Microsoft.Web/serverfarms"))
    check("FC1" in plans and "EP1" in plans, "plan: FC1 (Flex) with EP1 (Premium) by parameter")

    roles_text = (INFRA / "modules" / "roles.bicep").read_text()
    ro = p.get("modules/roles.bicep", {})
    assigned = resources(ro, "Microsoft.Authorization/roleAssignments")
    want = {
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
        "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
        "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba": "Key Vault Certificate User",
        "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
        "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
        "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader (the relay Logic App and the Function App only)",
    }
    for rid, name in want.items():
        check(rid in roles_text, f"roles.bicep: {name} ({rid}) is not assigned")
    # Reader is assigned twice: on the relay Logic App and on the Function App.
    check(len(assigned) == len(want) + 1, f"roles.bicep: {len(assigned)} role assignments, expected exactly {len(want) + 1} (no more than the app needs)")
    for name, r in assigned:
        check("scope" in r["config"], f"roles.bicep: {name} has no resource scope (never the group or subscription)")
        check(r["config"]["properties"].get("principalType") == "ServicePrincipal", f"roles.bicep: {name} principalType")
    # Each assignment says why, in the comment above its role id.
    for rid in want:
        line = next((l for l in roles_text.splitlines() if rid in l), "")
        idx = roles_text.splitlines().index(line) if line else 0
        check(idx > 0 and roles_text.splitlines()[idx - 1].strip().startswith("//"), f"roles.bicep: role {rid} has no comment saying why")

    rl = p.get("modules/relay.bicep", {})
    wf = resources(rl, "Microsoft.Logic/workflows")
    check(len(wf) == 1, "relay.bicep: one Logic App")
    if wf:
        c = json.dumps(wf[0][1]["config"])
        for claim in ["iss", "appid", "m", "u", "p"]:
            check(f'"name": "{claim}"' in c, f"relay: AADPOP claim {claim} missing")
        check('"type": "AADPOP"' in c, "relay: the trigger policy is AADPOP")
        check('"type": "ManagedServiceIdentity"' in c, "relay: the HTTP action authenticates with the managed identity")
        check(wf[0][1]["config"].get("identity", {}).get("type") == "SystemAssigned", "relay: system-assigned identity")

    mon = (INFRA / "modules" / "monitoring.bicep").read_text()
    check("DisableLocalAuth: true" in mon, "monitoring: Application Insights local auth must be off (Entra ingestion)")
    kv = (INFRA / "modules" / "keyvault.bicep").read_text()
    check("enableRbacAuthorization: true" in kv, "keyvault: RBAC mode")


# Values for settings whose Bicep value is an expression: what Azure would put there.
SAMPLES = {
    "ACCESSGATE_IDENTITY__TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "ACCESSGATE_CREDENTIALS__KEY_VAULT_URL": "https://kv-ag-sample.vault.azure.net/",
    "ACCESSGATE_QUEUE__ACCOUNT_URL": "https://stagsample.queue.core.windows.net",
    "ACCESSGATE_QUEUE__TABLE_ENDPOINT": "https://stagsample.table.core.windows.net",
    "ACCESSGATE_INBOUND__RELAY_AUDIENCES": '["https://management.azure.com/"]',
    "ACCESSGATE_INBOUND__RELAY_CALLER_IDS": '["aaaaaaaa-0000-0000-0000-000000000009"]',
    "ACCESSGATE_EXTENSIONS__ELM__RESOURCE": "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Logic/workflows/logic-accessgate-sample",
    "ACCESSGATE_AZURE__FUNCTION_APP": "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Web/sites/func-accessgate-sample",
    "ACCESSGATE_SERVICENOW__INSTANCE_URL": "https://example.service-now.com",
    "ACCESSGATE_SERVICENOW__USERNAME": "accessgate",
    # Key Vault references, resolved by App Service before the process starts.
    "ACCESSGATE_SERVICENOW__PASSWORD": "resolved-from-key-vault",
    "ACCESSGATE_SERVICENOW__WEBHOOK_SECRET": "resolved-from-key-vault-0123456789abcdef",
}


def settings_of(text):
    """`{ name: 'X', value: ... }` pairs: name, and the literal value or None."""
    out = []
    for m in re.finditer(r"\{\s*name:\s*'([A-Za-z0-9_]+)',\s*value:\s*(.+?)\s*\}\s*$", text, re.M):
        v = m.group(2)
        lit = re.fullmatch(r"'([^'$]*)'", v)
        out.append((m.group(1), lit.group(1) if lit else None))
    return out


def app_settings(binary):
    text = (INFRA / "modules" / "app.bicep").read_text()
    fn = (INFRA / "modules" / "function.bicep").read_text()
    names = {n for n, _ in settings_of(fn)}
    for need in ["AzureWebJobsStorage__accountName", "APPLICATIONINSIGHTS_CONNECTION_STRING",
                 "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]:
        check(need in names, f"function.bicep: app setting {need} is missing")
    check("AzureWebJobsStorage'" not in fn and "AccountKey" not in fn, "function.bicep: no storage connection string (identity-based)")
    pairs = settings_of(text)
    check(any(n == "ACCESSGATE_CREDENTIALS__MODE" for n, _ in pairs), "app.bicep: credentials mode is not set")
    # The relay settings and the direct ones are alternatives: check each set on its own.
    relay = [p for p in pairs if not (p[0] == "ACCESSGATE_INBOUND__MODE" and p[1] == "direct")]
    direct = [p for p in pairs if p[0] not in ("ACCESSGATE_INBOUND__RELAY_AUDIENCES", "ACCESSGATE_INBOUND__RELAY_CALLER_IDS") and not (p[0] == "ACCESSGATE_INBOUND__MODE" and p[1] == "relay")]
    for label, chosen in [("relay", relay), ("direct", direct)]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCESSGATE_")}
        for n, v in chosen:
            if not n.startswith("ACCESSGATE_"):
                continue
            value = v if v is not None else SAMPLES.get(n)
            check(value is not None, f"app.bicep: no sample value for {n} (add one to tools/check-infra.py)")
            env[n] = value or ""
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([binary, "check-config"], cwd=d, env=env, capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, f"app settings ({label} mode) are refused by accessgate check-config:\n{r.stdout}{r.stderr}")


def package(binary):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "pkg.zip"
        env = dict(os.environ, ACCESSGATE_BINARY=binary)
        r = subprocess.run(["bash", str(ROOT / "function-app" / "package.sh"), str(out)], env=env,
                           capture_output=True, text=True, timeout=600)
        check(r.returncode == 0, f"function-app/package.sh failed: {r.stderr[-800:]}")
        if r.returncode != 0:
            return
        with zipfile.ZipFile(out) as z:
            names = set(z.namelist())
            check("host.json" in names, "package: host.json not at the root")
            check("accessgate" in names, "package: the accessgate binary not at the root")
            if "accessgate" in names:
                mode = (z.getinfo("accessgate").external_attr >> 16) & 0o777
                check(mode & stat.S_IXUSR, f"package: accessgate lost its executable bit (mode {oct(mode)})")
            host = json.loads(z.read("host.json"))
            check(host["customHandler"]["description"]["defaultExecutablePath"] == "accessgate",
                  "package: host.json runs another executable")
            functions = sorted(p.parent.name for p in (ROOT / "function-app").glob("*/function.json"))
            for f in functions:
                check(f"{f}/function.json" in names, f"package: {f}/function.json missing")
            extra = {n.split("/")[0] for n in names if "/" in n} - set(functions)
            check(not extra, f"package: unexpected folders {sorted(extra)}")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    binary = str(Path(sys.argv[1]).resolve())
    parsed = parse_all()
    structure(parsed)
    app_settings(binary)
    package(binary)
    if problems:
        print("infra check: FAILED")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"infra check: {len(parsed)} Bicep files parse; resources, roles, settings and package hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
