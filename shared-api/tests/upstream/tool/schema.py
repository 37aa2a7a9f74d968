#!/usr/bin/env python3
"""Server-side dry-run of every case against a kube-apiserver that has upstream's CRDs.
Sends the file as application/yaml to the resource URL with dryRun=All&fieldValidation=Strict
(what `kubectl create --dry-run=server --validate=strict` sends) and records the Status
message and Warning headers exactly as the API server returned them.  Also runs kubectl
itself and checks that it agrees on the verdict.
usage: schema.py SERVER TOKEN KUBECTL KUBECONFIG CASEDIR OUT.json"""
import sys, os, json, ssl, glob, urllib.request, urllib.error, subprocess, yaml, re
server, token, kubectl, kubeconfig, casedir, out = sys.argv[1:7]
RES = {("kmm.sigs.x-k8s.io", "Module"): ("modules", True),
       ("kmm.sigs.x-k8s.io", "NodeModulesConfig"): ("nodemodulesconfigs", False),
       ("kmm.sigs.x-k8s.io", "PreflightValidation"): ("preflightvalidations", False),
       ("hub.kmm.sigs.x-k8s.io", "ManagedClusterModule"): ("managedclustermodules", False)}
ctx = ssl._create_unverified_context()
res = []
for f in sorted(glob.glob(os.path.join(casedir, "*.yaml"))):
    body = open(f, "rb").read()
    obj = yaml.safe_load(body)
    group, version = obj["apiVersion"].split("/")
    plural, namespaced = RES[(group, obj["kind"])]
    ns = (obj.get("metadata") or {}).get("namespace") or "default"
    path = f"/apis/{group}/{version}/" + (f"namespaces/{ns}/" if namespaced else "") + plural
    req = urllib.request.Request(server + path + "?dryRun=All&fieldValidation=Strict", data=body, method="POST",
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/yaml",
                                          "Accept": "application/json"})
    try:
        r = urllib.request.urlopen(req, context=ctx)
        code, hdrs, payload = r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        code, hdrs, payload = e.code, e.headers, json.loads(e.read())
    warnings = [re.sub(r'^299 - "(.*)"$', r"\1", w) for w in (hdrs.get_all("Warning") or [])]
    accepted = 200 <= code < 300
    if accepted:
        os.makedirs(os.path.join(os.path.dirname(out), "stored"), exist_ok=True)
        json.dump(payload, open(os.path.join(os.path.dirname(out), "stored", os.path.basename(f)[:-5] + ".json"), "w"), indent=1)
    k = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "create", "--dry-run=server", "--validate=strict", "-o", "name", "-f", f],
                       capture_output=True, text=True)
    assert (k.returncode == 0) == accepted, (f, code, k.stderr)
    res.append({"file": os.path.basename(f), "kind": obj["kind"], "apiVersion": obj["apiVersion"], "namespace": ns if namespaced else None,
                "schema": "accepted" if accepted else "refused", "httpCode": code,
                "schemaMessage": "" if accepted else payload.get("message", ""),
                "kubectlStderr": k.stderr.strip().replace(f, os.path.basename(f)),
                "warnings": warnings})
json.dump(res, open(out, "w"), indent=1)
print(len(res), "cases;", sum(r["schema"] == "accepted" for r in res), "accepted")
