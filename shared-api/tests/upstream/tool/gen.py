#!/usr/bin/env python3
"""Generate the upstream-example and variant case files.
Upstream examples are copied verbatim (one KMM document per file); the only
edits are the ones listed in each file's `# changed:` comment."""
import subprocess, re, os, sys, glob
R = os.environ.get("KMM_MIRROR", "/work/.mirror/kubernetes-sigs+kernel-module-management/repo")
OUT = sys.argv[1] if len(sys.argv) > 1 else "/work/main/shared-api/tests/upstream/cases"
HEADREV = os.environ.get("KMM_COMMIT", "HEAD")  # upstream commit used for "HEAD" examples
HEAD = subprocess.check_output(["git", "-C", R, "rev-parse", "--short=7", HEADREV], text=True).strip()
os.makedirs(OUT, exist_ok=True)
for f in glob.glob(os.path.join(OUT, "*.yaml")):
    os.remove(f)

def show(rev, path):
    rev = HEADREV if rev == "HEAD" else rev
    return subprocess.check_output(["git", "-C", R, "show", f"{rev}:{path}"], text=True)

def md_blocks(rev, path):
    t = show(rev, path)
    return [b for (_i, lang, b) in re.findall(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^[ \t]*```", t, re.S | re.M)
            if lang.lower() in ("yaml", "yml")]

KMM = re.compile(r"^apiVersion: *(hub\.)?kmm\.sigs\.x-k8s\.io/", re.M)

def kmm_docs(text):
    """Split a multi-document YAML text on '---' lines; keep KMM documents verbatim."""
    docs = re.split(r"^---[ \t]*\n", text, flags=re.M)
    return [d for d in docs if KMM.search(d)]

def write(n, name, header, body):
    fn = f"{n:03d}-{name}.yaml"
    if not body.endswith("\n"):
        body += "\n"
    with open(os.path.join(OUT, fn), "w") as f:
        f.write("".join(f"# {h}\n" for h in header))
        f.write(body)
    return fn

def example(n, name, rev, path, block=None, doc=0, repl=(), changed=None, wrap=None):
    text = md_blocks(rev, path)[block] if block is not None else show(rev, path)
    body = kmm_docs(text)[doc] if wrap is None else text
    for old, new in repl:
        assert old in body, (path, old)
        body = body.replace(old, new)
    if wrap is not None:
        body = wrap(body)
    tag = HEAD if rev == "HEAD" else rev
    where = path + (f" yaml block #{block}" if block is not None else "")
    hdr = [f"source: {where} ({tag})"]
    if changed:
        hdr.append(f"changed: {changed}")
    return write(n, name, hdr, body)

def indent(s, k):
    return "".join((" " * k + l if l.strip() else l) for l in s.splitlines(True))

# ---------------------------------------------------------------- upstream examples
E = []
E.append(example(1, "ci-module-build-sign", "HEAD", "ci/module-kmm-ci-build-sign.yaml"))
E.append(example(2, "ci-module-dra", "HEAD", "ci/module-kmm-ci-dra.yaml"))
E.append(example(3, "ci-mcm-build-sign", "HEAD", "ci/managedclustermodule-kmm-ci-build-sign.yaml"))
E.append(example(4, "sample-module", "HEAD", "config/samples/kmm.sigs.x-k8s.io_modules.yaml"))
E.append(example(5, "sample-nodemodulesconfig", "HEAD", "config/samples/kmm.sigs.x-k8s.io_nodemodulesconfigs.yaml",
                 repl=[("<kmod container image URL>", "quay.io/org/my-kmod:4.18.0-372.32.1.el8_6.x86_64")],
                 changed="containerImage placeholder '<kmod container image URL>' -> 'quay.io/org/my-kmod:4.18.0-372.32.1.el8_6.x86_64'"))
E.append(example(6, "sample-preflight-v1beta1", "HEAD", "config/samples/kmm.sigs.x-k8s.io_preflightvalidations.yaml"))
E.append(example(7, "sample-preflight-v1beta2", "HEAD", "config/samples/kmm.sigs.x-k8s.io_v1beta2_preflightvalidations.yaml"))
E.append(example(8, "sample-mcm", "HEAD", "config/samples-hub/hub.kmm.sigs.x-k8s.io_managedclustermodules.yaml"))
E.append(example(9, "doc-developer-module-sample", "HEAD", "docs/mkdocs/developer/index.md", block=0))
DK = "docs/mkdocs/documentation/deploy_kmod.md"
E.append(example(10, "doc-loading-order-fragment", "HEAD", DK, block=0,
                 wrap=lambda b: ("apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata:\n  name: my-kmod\n  namespace: default\n"
                                 "spec:\n  moduleLoader:\n    container:\n      modprobe:\n        moduleName: mod_a\n"
                                 + indent(b, 8) +
                                 "      kernelMappings:\n        - regexp: '^.+$'\n          containerImage: \"some.registry/org/my-kmod:${KERNEL_FULL_VERSION}\"\n"
                                 "  selector:\n    node-role.kubernetes.io/worker: \"\"\n"),
                 changed="fragment (modprobe-level modulesLoadingOrder list) embedded under spec.moduleLoader.container.modprobe of a minimal Module: added apiVersion, kind, metadata.name/namespace, modprobe.moduleName mod_a (the first list element, as the docs require), one kernelMapping (from the deploy_kmod.md reference example) and the selector"))
E.append(example(11, "doc-intree-list-fragment", "HEAD", DK, block=1,
                 wrap=lambda b: ("apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata:\n  name: my-kmod\n  namespace: default\n" + b),
                 changed="fragment: added apiVersion, kind, metadata.name/namespace; spec kept as in the docs (kernelMappings/selector intentionally not added)"))
E.append(example(12, "doc-rebuild-trigger", "HEAD", DK, block=2))
E.append(example(13, "doc-device-plugin-only", "HEAD", DK, block=3))
E.append(example(14, "doc-dra-only", "HEAD", DK, block=4))
E.append(example(15, "doc-module-reference", "HEAD", DK, block=5))
E.append(example(16, "doc-module-reference-dra", "HEAD", DK, block=6))
E.append(example(17, "doc-firmware", "HEAD", "docs/mkdocs/documentation/firmwares.md", block=0))
E.append(example(18, "doc-hub-mcm", "HEAD", "docs/mkdocs/documentation/hub_spoke.md", block=0))
E.append(example(19, "doc-preflight", "HEAD", "docs/mkdocs/documentation/preflight_validation.md", block=0))
SB = "docs/mkdocs/documentation/secure_boot.md"
E.append(example(20, "doc-secure-boot-sign-only", "HEAD", SB, block=1,
                 repl=[("'<your module name>'", "'my_driver'"),
                       ("<image name e.g. quay.io/myuser/my-driver:<kernelversion>-signed>", "quay.io/myuser/my-driver:${KERNEL_FULL_VERSION}-signed"),
                       ("<image name e.g. quay.io/myuser/my-driver:<kernelversion> >", "quay.io/myuser/my-driver:${KERNEL_FULL_VERSION}"),
                       ("<private key secret name>", "my-signing-key"),
                       ("<certificate secret name>", "my-signing-key-pub")],
                 changed="placeholders filled: moduleName '<your module name>' -> 'my_driver'; containerImage -> quay.io/myuser/my-driver:${KERNEL_FULL_VERSION}-signed; unsignedImage -> quay.io/myuser/my-driver:${KERNEL_FULL_VERSION}; key/cert secret names -> my-signing-key / my-signing-key-pub (the names used by the Secret example on the same page)"))
E.append(example(21, "doc-secure-boot-build-sign", "HEAD", SB, block=2,
                 repl=[("< the name of the final driver container to produce>", "quay.io/myuser/my-driver:${KERNEL_FULL_VERSION}-signed"),
                       ("<private key secret name>", "my-signing-key"),
                       ("<certificate secret name>", "my-signing-key-pub")],
                 changed="placeholders filled: containerImage -> quay.io/myuser/my-driver:${KERNEL_FULL_VERSION}-signed; key/cert secret names -> my-signing-key / my-signing-key-pub; the ConfigMap document of the same block is not included"))
E.append(example(22, "lab-aws", "HEAD", "docs/mkdocs/lab/aws/kmm-kmod.yaml",
                 repl=[("<aws-account-id>.dkr.ecr.<aws-region>.amazonaws.com", "123456789012.dkr.ecr.eu-west-3.amazonaws.com")],
                 changed="'<aws-account-id>' -> 123456789012, '<aws-region>' -> eu-west-3"))
E.append(example(23, "lab-azure", "HEAD", "docs/mkdocs/lab/azure/kmm-kmod.yaml"))
E.append(example(24, "lab-gke", "HEAD", "docs/mkdocs/lab/gke/gke-ubuntu-nodes.yaml",
                 repl=[("gcr.io/<myrepo>/", "gcr.io/myrepo/")], changed="'<myrepo>' -> myrepo"))
E.append(example(25, "lab-ubuntu", "HEAD", "docs/mkdocs/lab/ubuntu/kmm-kmod.yaml"))
E.append(example(26, "doc-kmod-image-mapping-fragment", "HEAD", "docs/mkdocs/documentation/kmod_image.md", block=0,
                 wrap=lambda b: ("apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata:\n  name: my-kmod\n  namespace: default\n"
                                 "spec:\n  moduleLoader:\n    container:\n      modprobe:\n        moduleName: my-kmod\n      kernelMappings:\n"
                                 + indent(b, 8) + "  selector:\n    node-role.kubernetes.io/worker: \"\"\n"),
                 changed="fragment (one kernelMappings item) embedded in a minimal Module: added apiVersion, kind, metadata.name/namespace, modprobe.moduleName my-kmod, selector"))
E.append(example(27, "v2.6.0-doc-module-reference", "v2.6.0", DK, block=4))
E.append(example(28, "v2.6.0-doc-hub-mcm", "v2.6.0", "docs/mkdocs/documentation/hub_spoke.md", block=0))
E.append(example(29, "doc-secure-boot-sign-only-unfilled", "HEAD", SB, block=1))

# ---------------------------------------------------------------- variants
BASE = """apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata:
  name: m
  namespace: ns
spec:
  moduleLoader:
    container:
      modprobe:
        moduleName: my-kmod
      kernelMappings:
        - regexp: '^.+$'
          containerImage: "some.registry/org/my-kmod:${KERNEL_FULL_VERSION}"
  selector:
    node-role.kubernetes.io/worker: ""
"""
n = [100]
def variant(name, of, what, body):
    fn = write(n[0], "variant-" + name, [f"variant of: {of}: {what}"], body)
    n[0] += 1
    return fn

B0 = variant("base", "016-doc-module-reference-dra.yaml", "spec.dra and spec.imageRepoSecret removed, metadata.name m / namespace ns", BASE)

def mod(container_extra="", mapping_extra="", spec_extra="", modprobe_extra="", mapping=None, name="m", ns="ns", container_image_line="", moduleloader=True):
    mp = mapping if mapping is not None else ("        - regexp: '^.+$'\n          containerImage: \"some.registry/org/my-kmod:${KERNEL_FULL_VERSION}\"\n" + mapping_extra)
    s = f"apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
    if moduleloader:
        s += ("  moduleLoader:\n    container:\n      modprobe:\n" + (modprobe_extra if modprobe_extra is not None else "")
              + container_image_line + container_extra + "      kernelMappings:\n" + mp)
    s += spec_extra + "  selector:\n    node-role.kubernetes.io/worker: \"\"\n"
    return s

MN = "        moduleName: my-kmod\n"
# modprobe args / rawArgs
variant("modprobe-args-load-only", B0, "modprobe.args.load set, args.unload absent",
        mod(modprobe_extra=MN + "        args:\n          load: [\"-v\"]\n"))
variant("modprobe-args-unload-only", B0, "modprobe.args.unload set, args.load absent",
        mod(modprobe_extra=MN + "        args:\n          unload: [\"-v\"]\n"))
variant("modprobe-args-load-empty-list", B0, "modprobe.args.load: [] (MinItems=1)",
        mod(modprobe_extra=MN + "        args:\n          load: []\n"))
variant("modprobe-rawargs-load-only-no-name", B0, "moduleName removed, rawArgs.load only",
        mod(modprobe_extra="        rawArgs:\n          load: [\"insmod\", \"/opt/my.ko\"]\n"))
variant("modprobe-rawargs-both-no-name", B0, "moduleName removed, rawArgs.load and rawArgs.unload",
        mod(modprobe_extra="        rawArgs:\n          load: [\"insmod\", \"/opt/my.ko\"]\n          unload: [\"rmmod\", \"my\"]\n"))
variant("modprobe-rawargs-with-name", B0, "moduleName kept and rawArgs.load/unload set",
        mod(modprobe_extra=MN + "        rawArgs:\n          load: [\"-v\"]\n          unload: [\"-v\"]\n"))
variant("modprobe-no-name-no-args", B0, "modprobe: {} (no moduleName, no rawArgs)",
        mod(modprobe_extra="        {}\n").replace("      modprobe:\n        {}\n", "      modprobe: {}\n"))
variant("modprobe-loading-order-one", B0, "modulesLoadingOrder with a single element",
        mod(modprobe_extra=MN + "        modulesLoadingOrder: [my-kmod]\n"))
variant("modprobe-loading-order-wrong-first", B0, "modulesLoadingOrder whose first element is not moduleName",
        mod(modprobe_extra=MN + "        modulesLoadingOrder: [dep_a, my-kmod]\n"))
variant("modprobe-loading-order-duplicate", B0, "modulesLoadingOrder with a duplicate",
        mod(modprobe_extra=MN + "        modulesLoadingOrder: [my-kmod, dep_a, dep_a]\n"))
variant("modprobe-dirname-empty", B0, "modprobe.dirName: \"\"",
        mod(modprobe_extra=MN + "        dirName: \"\"\n"))
variant("modulename-with-dots", B0, "moduleName: my.mod",
        mod(modprobe_extra="        moduleName: my.mod\n"))
variant("modulename-empty-string", B0, "moduleName: \"\" (no rawArgs)",
        mod(modprobe_extra="        moduleName: \"\"\n"))
# version / empty optional strings
variant("version-empty", B0, "container.version: \"\"", mod(modprobe_extra=MN, container_extra="      version: \"\"\n"))
variant("version-set", B0, "container.version: \"1.0\"", mod(modprobe_extra=MN, container_extra="      version: \"1.0\"\n"))
variant("empty-optional-strings", B0, "empty strings for optional fields: containerImage, inTreeModuleToRemove, firmwarePath, serviceAccountName, literal",
        mod(modprobe_extra=MN + "        firmwarePath: \"\"\n", container_extra="      containerImage: \"\"\n      inTreeModuleToRemove: \"\"\n",
            mapping="        - regexp: '^.+$'\n          literal: \"\"\n          containerImage: \"some.registry/org/my-kmod:${KERNEL_FULL_VERSION}\"\n").replace(
            "  moduleLoader:\n", "  moduleLoader:\n    serviceAccountName: \"\"\n"))
variant("regexp-empty-and-literal-empty", B0, "mapping with regexp: \"\" and literal: \"\"",
        mod(modprobe_extra=MN, mapping="        - regexp: \"\"\n          literal: \"\"\n          containerImage: \"some.registry/org/my-kmod:${KERNEL_FULL_VERSION}\"\n"))
variant("regexp-and-literal", B0, "mapping with both regexp and literal",
        mod(modprobe_extra=MN, mapping="        - regexp: '^.+$'\n          literal: 6.1.0-28-amd64\n          containerImage: \"some.registry/org/my-kmod:${KERNEL_FULL_VERSION}\"\n"))
variant("literal-only", B0, "mapping with literal 6.1.0-28-amd64 only",
        mod(modprobe_extra=MN, mapping="        - literal: 6.1.0-28-amd64\n          containerImage: \"some.registry/org/my-kmod:${KERNEL_FULL_VERSION}\"\n"))
variant("no-kernel-mappings", B0, "kernelMappings: [] with container-level containerImage",
        mod(modprobe_extra=MN, container_image_line="      containerImage: some.registry/org/my-kmod:v1\n", mapping="").replace("      kernelMappings:\n", "      kernelMappings: []\n"))
variant("kernel-mappings-absent", B0, "kernelMappings key absent, container-level containerImage",
        mod(modprobe_extra=MN, container_image_line="      containerImage: some.registry/org/my-kmod:v1\n", mapping="").replace("      kernelMappings:\n", ""))
# regexps (Go RE2 syntax)
for tag, rx in [("quote-meta", r"^\Q6.1.0\E-.*$"), ("any-byte", r"^6\C1.*$"), ("ungreedy-flag", r"(?U)^6.+amd64$"),
                ("posix-class", r"^[[:digit:]]+\.[[:alpha:][:digit:]]*.*$"), ("unicode-class", r"^\pN.*$"), ("unicode-class-letter", r"^.*\pL.*$"),
                ("repeat-no-min", r"^6{,2}.*$"), ("escaped-underscore", r"^.*\_.*$"), ("named-group-angle", r"^(?<major>\d+)\..*$"),
                ("named-group-p", r"^(?P<major>\d+)\..*$"), ("form-feed-escape", r"^.+\fc37\.x86_64$"), ("lookahead", r"^6(?=\.).*$"),
                ("backreference", r"^(\d)\1.*$"), ("invalid-unclosed", r"^(6.1.*$"), ("invalid-star", r"*.amd64$"),
                ("el9-escaped", r"^.+\.el9_\d\.x86_64$"), ("unanchored-dot", r"6.6")]:
    variant("regexp-" + tag, B0, f"kernelMappings[0].regexp: {rx}",
            mod(modprobe_extra=MN, mapping=f"        - regexp: '{rx}'\n          containerImage: \"some.registry/org/my-kmod:${{KERNEL_FULL_VERSION}}\"\n"))
variant("kernel-templates-all", B0, "containerImage uses every KERNEL_* variable plus MOD_NAME/MOD_NAMESPACE",
        mod(modprobe_extra=MN, mapping="        - regexp: '^.+$'\n          containerImage: \"some.registry/$MOD_NAMESPACE/$MOD_NAME:${KERNEL_XYZ}-${KERNEL_X}.${KERNEL_Y}.${KERNEL_Z}-${KERNEL_VERSION}-$KERNEL_FULL_VERSION\"\n"))
variant("kernel-templates-unknown-var", B0, "containerImage uses an undefined variable ${FOO} and ${KERNEL_XYZ:-def}",
        mod(modprobe_extra=MN, mapping="        - regexp: '^.+$'\n          containerImage: \"some.registry/org/my-kmod:${FOO}${KERNEL_XYZ:-def}\"\n"))
# imagePullPolicy
for v in ["Always", "IfNotPresent", "Never", '""', "Sometimes"]:
    variant("image-pull-policy-" + (v.strip('"') or "empty").lower(), B0, f"container.imagePullPolicy: {v}",
            mod(modprobe_extra=MN, container_extra=f"      imagePullPolicy: {v}\n"))
variant("device-plugin-image-pull-policy-sometimes", "013-doc-device-plugin-only.yaml", "devicePlugin.container.imagePullPolicy: Sometimes, metadata.namespace ns",
        "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata:\n  name: my-kmod\n  namespace: ns\nspec:\n  selector:\n    node-role.kubernetes.io/worker: \"\"\n"
        "  devicePlugin:\n    container:\n      image: some.registry/org/my-device-plugin:latest\n      imagePullPolicy: Sometimes\n")
# device plugin / DRA hostPath volumes
def dp(path, section="devicePlugin"):
    img = "my-device-plugin" if section == "devicePlugin" else "my-dra-driver"
    extra = "    driverName: dra.example.com\n" if section == "dra" else ""
    return ("apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata:\n  name: my-kmod\n  namespace: ns\nspec:\n  selector:\n    node-role.kubernetes.io/worker: \"\"\n"
            f"  {section}:\n{extra}    container:\n      image: some.registry/org/{img}:latest\n      volumeMounts:\n        - mountPath: /host\n          name: host\n"
            f"    volumes:\n      - name: host\n        hostPath:\n          path: {path}\n")
for p in ["/", "/etc", "/dev/x", "/var/lib/kubelet", "/run/../etc", "/dev", "/devices", "/opt/", "relative/dev", "/sys/../sys/class"]:
    tag = p.strip("/").replace("/", "-").replace("..", "dotdot") or "root"
    variant("device-plugin-hostpath-" + tag, "013-doc-device-plugin-only.yaml", f"devicePlugin.volumes hostPath {p}, metadata.namespace ns", dp(p))
variant("dra-hostpath-etc", "014-doc-dra-only.yaml", "dra.volumes hostPath /etc, metadata.namespace ns", dp("/etc", "dra"))
variant("dra-hostpath-var-run", "014-doc-dra-only.yaml", "dra.volumes hostPath /var/run/cdi, metadata.namespace ns", dp("/var/run/cdi", "dra"))
variant("device-plugin-configmap-volume", "013-doc-device-plugin-only.yaml", "devicePlugin.volumes configMap volume (no hostPath)",
        dp("/x").replace("        hostPath:\n          path: /x\n", "        configMap:\n          name: cm\n"))
# tolerations
TOL = [("valid", "- key: node.kubernetes.io/unschedulable\n    operator: Exists\n    effect: NoSchedule"),
       ("valid-empty-key-exists", "- operator: Exists"),
       ("valid-noexecute-seconds", "- key: k\n    operator: Equal\n    value: v\n    effect: NoExecute\n    tolerationSeconds: 30"),
       ("bad-key", "- key: \"bad key!\"\n    operator: Exists"),
       ("empty-key-equal", "- operator: Equal\n    value: v"),
       ("empty-key-no-operator", "- effect: NoSchedule"),
       ("exists-with-value", "- key: k\n    operator: Exists\n    value: v"),
       ("seconds-without-noexecute", "- key: k\n    operator: Exists\n    effect: NoSchedule\n    tolerationSeconds: 30"),
       ("seconds-no-effect", "- key: k\n    operator: Exists\n    tolerationSeconds: 30"),
       ("bad-operator", "- key: k\n    operator: In\n    value: v"),
       ("lowercase-operator", "- key: k\n    operator: exists"),
       ("bad-effect", "- key: k\n    operator: Exists\n    effect: NoRun"),
       ("bad-value", "- key: k\n    operator: Equal\n    value: \"not a label value!\""),
       ("default-operator-value", "- key: k\n    value: v\n    effect: PreferNoSchedule")]
for tag, t in TOL:
    variant("toleration-" + tag, B0, "spec.tolerations: " + re.sub(r"\n *", "; ", t),
            mod(modprobe_extra=MN, spec_extra="  tolerations:\n  " + t + "\n"))
# in-tree modules to remove
variant("intree-both-container", B0, "container has inTreeModuleToRemove and inTreeModulesToRemove",
        mod(modprobe_extra=MN, container_extra="      inTreeModuleToRemove: old_a\n      inTreeModulesToRemove: [old_a, old_b]\n"))
variant("intree-both-mapping", B0, "kernelMappings[0] has inTreeModuleToRemove and inTreeModulesToRemove",
        mod(modprobe_extra=MN, mapping_extra="          inTreeModuleToRemove: old_a\n          inTreeModulesToRemove: [old_a, old_b]\n"))
variant("intree-mixed-container-single-mapping-list", B0, "container inTreeModuleToRemove, mapping inTreeModulesToRemove",
        mod(modprobe_extra=MN, container_extra="      inTreeModuleToRemove: old_a\n", mapping_extra="          inTreeModulesToRemove: [old_b, old_c]\n"))
variant("intree-mixed-container-list-mapping-single", B0, "container inTreeModulesToRemove, mapping inTreeModuleToRemove",
        mod(modprobe_extra=MN, container_extra="      inTreeModulesToRemove: [old_a, old_b]\n", mapping_extra="          inTreeModuleToRemove: old_c\n"))
variant("intree-container-single", B0, "container inTreeModuleToRemove only",
        mod(modprobe_extra=MN, container_extra="      inTreeModuleToRemove: old_a\n"))
variant("intree-container-list-mapping-list", B0, "container inTreeModulesToRemove, mapping inTreeModulesToRemove (mapping wins)",
        mod(modprobe_extra=MN, container_extra="      inTreeModulesToRemove: [old_a, old_b]\n", mapping_extra="          inTreeModulesToRemove: [old_c]\n"))
variant("intree-container-single-mapping-single", B0, "container and mapping inTreeModuleToRemove (mapping wins)",
        mod(modprobe_extra=MN, container_extra="      inTreeModuleToRemove: old_a\n", mapping_extra="          inTreeModuleToRemove: old_c\n"))
variant("intree-list-empty", B0, "container inTreeModulesToRemove: [] and mapping inTreeModuleToRemove",
        mod(modprobe_extra=MN, container_extra="      inTreeModulesToRemove: []\n", mapping_extra="          inTreeModuleToRemove: old_c\n"))
# container image presence / format
variant("mapping-no-image-none-at-container", B0, "kernelMappings[0].containerImage removed, no container-level containerImage",
        mod(modprobe_extra=MN, mapping="        - regexp: '^.+$'\n"))
variant("mapping-empty-image-none-at-container", B0, "kernelMappings[0].containerImage: \"\", no container-level containerImage",
        mod(modprobe_extra=MN, mapping="        - regexp: '^.+$'\n          containerImage: \"\"\n"))
variant("mapping-no-image-container-image", B0, "kernelMappings[0].containerImage removed, container-level containerImage set",
        mod(modprobe_extra=MN, container_image_line="      containerImage: some.registry/org/my-kmod:${KERNEL_FULL_VERSION}\n", mapping="        - regexp: '^.+$'\n"))
for tag, img in [("registry-port-no-tag", "registry.local:5000/org/kmod"), ("no-tag", "quay.io/org/kmod"), ("tag", "quay.io/org/kmod:v1"),
                 ("digest", "quay.io/org/kmod@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                 ("bare-name", "kmod"), ("template-only-tag", "quay.io/org/kmod:${KERNEL_FULL_VERSION}")]:
    variant("image-" + tag, B0, f"kernelMappings[0].containerImage: {img}",
            mod(modprobe_extra=MN, mapping=f"        - regexp: '^.+$'\n          containerImage: {img}\n"))
    variant("container-image-" + tag, B0, f"container-level containerImage: {img}, mapping containerImage: \"\"",
            mod(modprobe_extra=MN, container_image_line=f"      containerImage: {img}\n", mapping="        - regexp: '^.+$'\n          containerImage: \"\"\n"))
# name lengths (name+namespace = 41 / 42)
for total in (41, 42):
    nm = "n" * (total - 2)
    variant(f"name-ns-{total}-no-version", B0, f"name {len(nm)} chars + namespace 'ns' = {total}, no version", mod(modprobe_extra=MN, name=nm))
    variant(f"name-ns-{total}-version", B0, f"name {len(nm)} chars + namespace 'ns' = {total}, version 1.0",
            mod(modprobe_extra=MN, name=nm, container_extra="      version: \"1.0\"\n"))
variant("name-ns-42-device-plugin-only", "013-doc-device-plugin-only.yaml", "name 40 chars + namespace 'ns' = 42, no moduleLoader",
        dp("/dev").replace("name: my-kmod\n  namespace: ns", "name: " + "n" * 40 + "\n  namespace: ns"))
# DRA
DRA = "  dra:\n    driverName: {d}\n    container:\n      image: some.registry/org/my-dra-driver:latest\n{extra}"
variant("dra-with-device-plugin", "016-doc-module-reference-dra.yaml", "spec.dra and spec.devicePlugin both set",
        mod(modprobe_extra=MN, spec_extra=DRA.format(d="dra.example.com", extra="") + "  devicePlugin:\n    container:\n      image: some.registry/org/dp:latest\n"))
variant("dra-only-minimal", "014-doc-dra-only.yaml", "DRA-only Module, metadata.namespace ns",
        mod(moduleloader=False, spec_extra=DRA.format(d="dra.example.com", extra="")))
for tag, d in [("uppercase", "DRA.Example.com"), ("underscore", "dra_example.com"), ("empty", '""'), ("single-label", "dra"), ("trailing-dot", "dra.example.com.")]:
    variant("dra-driver-name-" + tag, "014-doc-dra-only.yaml", f"spec.dra.driverName: {d}", mod(moduleloader=False, spec_extra=DRA.format(d=d, extra="")))
variant("dra-driver-name-missing", "014-doc-dra-only.yaml", "spec.dra.driverName absent",
        mod(moduleloader=False, spec_extra="  dra:\n    container:\n      image: some.registry/org/my-dra-driver:latest\n"))
variant("dra-device-classes-duplicate", "016-doc-module-reference-dra.yaml", "spec.dra.deviceClasses has the same name twice",
        mod(moduleloader=False, spec_extra=DRA.format(d="dra.example.com", extra="    deviceClasses:\n      - name: my-class\n      - name: my-class\n")))
variant("dra-device-class-bad-name", "016-doc-module-reference-dra.yaml", "spec.dra.deviceClasses[0].name: My_Class",
        mod(moduleloader=False, spec_extra=DRA.format(d="dra.example.com", extra="    deviceClasses:\n      - name: My_Class\n")))
variant("dra-device-class-empty-name", "016-doc-module-reference-dra.yaml", "spec.dra.deviceClasses[0].name: \"\"",
        mod(moduleloader=False, spec_extra=DRA.format(d="dra.example.com", extra="    deviceClasses:\n      - name: \"\"\n")))
# unknown fields / structure
variant("unknown-field-container", B0, "spec.moduleLoader.container.foo: 1", mod(modprobe_extra=MN, container_extra="      foo: 1\n"))
variant("unknown-field-spec", B0, "spec.foo: bar", mod(modprobe_extra=MN, spec_extra="  foo: bar\n"))
variant("selector-absent", B0, "spec.selector removed", mod(modprobe_extra=MN).replace("  selector:\n    node-role.kubernetes.io/worker: \"\"\n", ""))
variant("selector-empty", B0, "spec.selector: {}", mod(modprobe_extra=MN).replace("  selector:\n    node-role.kubernetes.io/worker: \"\"\n", "  selector: {}\n"))
variant("spec-empty", B0, "spec: {}", "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata:\n  name: m\n  namespace: ns\nspec: {}\n")
variant("modprobe-absent", B0, "spec.moduleLoader.container.modprobe removed", mod(modprobe_extra=MN).replace("      modprobe:\n        moduleName: my-kmod\n", ""))
# sign
SIGN = "          sign:\n            keySecret:\n              name: k\n            certSecret:\n              name: c\n"
variant("sign-no-files", B0, "mapping sign without filesToSign", mod(modprobe_extra=MN, mapping_extra=SIGN + "            unsignedImage: some.registry/org/my-kmod:${KERNEL_FULL_VERSION}-unsigned\n"))
variant("sign-file-outside-dirname", B0, "mapping sign with a file outside dirName /opt",
        mod(modprobe_extra=MN, mapping_extra=SIGN + "            filesToSign: [\"/lib/modules/${KERNEL_FULL_VERSION}/my.ko\"]\n"))
variant("sign-merge-container-and-mapping", B0, "container-level sign and mapping-level sign (merge: files appended, mapping unsignedImage wins)",
        mod(modprobe_extra=MN, container_extra="      sign:\n        keySecret:\n          name: k\n        certSecret:\n          name: c\n        unsignedImage: some.registry/org/base:${KERNEL_XYZ}\n        filesToSign: [\"/opt/lib/modules/${KERNEL_FULL_VERSION}/a.ko\"]\n",
            mapping_extra="          sign:\n            unsignedImage: some.registry/org/unsigned:${KERNEL_X}.${KERNEL_Y}\n            filesToSign: [\"/opt/lib/modules/${KERNEL_VERSION}/b.ko\"]\n"))
variant("sign-dirname-custom", B0, "dirName /bin, sign file under /bin", mod(modprobe_extra=MN + "        dirName: /bin\n", mapping_extra=SIGN + "            filesToSign: [/bin/getconf]\n"))
variant("sign-dirname-prefix-trap", B0, "dirName /opt, sign file /optional/x.ko (string prefix without slash)",
        mod(modprobe_extra=MN, mapping_extra=SIGN + "            filesToSign: [/optional/x.ko]\n"))
# MCM
MCM = """apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: my-mcm
spec:
  moduleSpec:
    moduleLoader:
      container:
        modprobe:
          moduleName: my-kmod
        kernelMappings:
          - regexp: '^.+$'
            containerImage: "some.registry/org/my-kmod:${KERNEL_FULL_VERSION}"
    selector:
      node-role.kubernetes.io/worker: ""
  spokeNamespace: some-namespace
  selector:
    wants-my-mcm: 'true'
"""
M0 = variant("mcm-base", "018-doc-hub-mcm.yaml", "moduleSpec filled with a moduleLoader (from the deploy_kmod reference)", MCM)
variant("mcm-missing-spoke-namespace", M0, "spec.spokeNamespace removed", MCM.replace("  spokeNamespace: some-namespace\n", ""))
variant("mcm-empty-spoke-namespace", M0, "spec.spokeNamespace: \"\"", MCM.replace("  spokeNamespace: some-namespace\n", "  spokeNamespace: \"\"\n"))
variant("mcm-selector-empty", M0, "spec.selector: {}", MCM.replace("  selector:\n    wants-my-mcm: 'true'\n", "  selector: {}\n"))
variant("mcm-selector-absent", M0, "spec.selector removed", MCM.replace("  selector:\n    wants-my-mcm: 'true'\n", ""))
variant("mcm-long-name", M0, "metadata.name of 60 chars (webhook sees no name/namespace)", MCM.replace("name: my-mcm", "name: " + "m" * 60))
variant("mcm-bad-toleration", M0, "moduleSpec.tolerations with Exists and a value",
        MCM.replace("    selector:\n      node-role", "    tolerations:\n    - key: k\n      operator: Exists\n      value: v\n    selector:\n      node-role"))
variant("mcm-dra-and-device-plugin", M0, "moduleSpec has dra and devicePlugin",
        MCM.replace("    selector:\n      node-role", "    dra:\n      driverName: dra.example.com\n      container:\n        image: r/d:1\n    devicePlugin:\n      container:\n        image: r/dp:1\n    selector:\n      node-role"))
variant("mcm-image-no-tag", M0, "moduleSpec mapping containerImage without tag", MCM.replace('"some.registry/org/my-kmod:${KERNEL_FULL_VERSION}"', "quay.io/org/kmod"))
variant("mcm-unknown-field", M0, "spec.moduleSpec.moduleLoader.container.foo: 1", MCM.replace("        modprobe:\n", "        foo: 1\n        modprobe:\n"))
# PreflightValidation
PV = "apiVersion: kmm.sigs.x-k8s.io/{v}\nkind: PreflightValidation\nmetadata:\n  name: preflight\nspec:\n{spec}"
for v, of in (("v1beta1", "006-sample-preflight-v1beta1.yaml"), ("v1beta2", "007-sample-preflight-v1beta2.yaml")):
    variant(f"preflight-{v}-no-kernel", of, "spec.kernelVersion removed", PV.format(v=v, spec="  pushBuiltImage: true\n"))
    variant(f"preflight-{v}-empty-kernel", of, "spec.kernelVersion: \"\"", PV.format(v=v, spec="  kernelVersion: \"\"\n  pushBuiltImage: true\n"))
    variant(f"preflight-{v}-no-push", of, "spec.pushBuiltImage removed", PV.format(v=v, spec="  kernelVersion: 6.1.0-28-amd64\n"))
    variant(f"preflight-{v}-short-kernel", of, "spec.kernelVersion: 6.6", PV.format(v=v, spec="  kernelVersion: \"6.6\"\n  pushBuiltImage: false\n"))
    variant(f"preflight-{v}-kernel-plus", of, "spec.kernelVersion: 6.6.0+", PV.format(v=v, spec="  kernelVersion: 6.6.0+\n  pushBuiltImage: false\n"))
    variant(f"preflight-{v}-spec-absent", of, "spec removed", f"apiVersion: kmm.sigs.x-k8s.io/{v}\nkind: PreflightValidation\nmetadata:\n  name: preflight\n")
    variant(f"preflight-{v}-push-string", of, "spec.pushBuiltImage: \"true\" (string)", PV.format(v=v, spec="  kernelVersion: 6.1.0-28-amd64\n  pushBuiltImage: \"true\"\n"))
# NodeModulesConfig as written by upstream's controller
def nmc(cfg_extra, item_extra=""):
    return ("apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: NodeModulesConfig\nmetadata:\n  name: worker-0\nspec:\n  modules:\n"
            "  - name: m\n    namespace: ns\n    serviceAccountName: \"\"\n" + item_extra +
            "    config:\n      kernelVersion: 6.1.0-28-amd64\n      containerImage: some.registry/org/my-kmod:6.1.0-28-amd64\n"
            + cfg_extra + "      insecurePull: false\n      modprobe:\n        moduleName: my-kmod\n        dirName: /opt\n")
of = "005-sample-nodemodulesconfig.yaml"
variant("nmc-controller-pull-policy-empty", of, "spec as the controller serialises a Module without imagePullPolicy (imagePullPolicy: \"\")", nmc("      imagePullPolicy: \"\"\n"))
variant("nmc-pull-policy-omitted", of, "config.imagePullPolicy omitted (CRD default IfNotPresent)", nmc(""))
variant("nmc-pull-policy-always", of, "config.imagePullPolicy: Always", nmc("      imagePullPolicy: Always\n"))
variant("nmc-pull-policy-sometimes", of, "config.imagePullPolicy: Sometimes", nmc("      imagePullPolicy: Sometimes\n"))
variant("nmc-intree-single", of, "config.inTreeModuleToRemove (deprecated field as older controllers wrote it)", nmc("      imagePullPolicy: IfNotPresent\n      inTreeModuleToRemove: old_a\n"))
variant("nmc-intree-both", of, "config.inTreeModuleToRemove and inTreeModulesToRemove", nmc("      imagePullPolicy: IfNotPresent\n      inTreeModuleToRemove: old_a\n      inTreeModulesToRemove: [old_a, old_b]\n"))
variant("nmc-with-version-tolerations-secret", of, "item version, tolerations, imageRepoSecret",
        nmc("      imagePullPolicy: IfNotPresent\n", "    version: \"1.0\"\n    imageRepoSecret:\n      name: s\n    tolerations:\n    - key: k\n      operator: Exists\n      effect: NoSchedule\n"))
variant("nmc-missing-service-account", of, "item serviceAccountName absent", nmc("      imagePullPolicy: IfNotPresent\n").replace("    serviceAccountName: \"\"\n", ""))
variant("nmc-missing-kernel-version", of, "config.kernelVersion absent", nmc("      imagePullPolicy: IfNotPresent\n").replace("      kernelVersion: 6.1.0-28-amd64\n", ""))
variant("nmc-empty-spec", of, "spec: {}", "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: NodeModulesConfig\nmetadata:\n  name: worker-0\nspec: {}\n")
print(len(E), "examples,", n[0] - 100, "variants")
