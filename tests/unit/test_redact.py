"""provision/redact.py: each rule on the shapes secrets really take, and what must stay readable."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import yaml

from provision.redact import MASK, MIN_LITERAL, Redactor, secret_name

KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7canaryKEYbody0123456789abcdefABCDEF"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{KEY_BODY}\n{KEY_BODY}\n-----END RSA PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUcertificatebody\n-----END CERTIFICATE-----\n"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_secret_names_follow_sos_but_keep_references_and_selectors():
    for name in ("DB_PASSWORD", "secretToken", "cookieSecret", "client_secret", "API_TOKEN", "apiKey",
                 "client-key-data", "AWS_SECRET_ACCESS_KEY", "pwd", "GIT_CREDENTIALS", "privateKey"):
        assert secret_name(name), name
    for name in ("key", "keys", "secretName", "tokenPath", "passwordFile", "HOME", "operator", "secretKeyRef",
                 "tokenTTL", "client_id", "DATABASE_URL"):
        assert not secret_name(name), name


def test_kubernetes_secret_keeps_names_types_and_keys_and_its_values_are_wiped_everywhere():
    value = "hunter2-canary-value"
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "db", "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                                         json.dumps({"kind": "Secret", "data": {"pw": b64(value)}})}},
              "data": {"pw": b64(value)}, "stringData": {"other": "plain-canary-value"}}
    r = Redactor()
    out = r.data({"kind": "List", "items": [secret]})["items"][0]
    assert out["data"] == {"pw": MASK} and out["stringData"] == {"other": MASK}
    assert out["type"] == "Opaque" and out["metadata"]["name"] == "db"
    assert value not in json.dumps(out) and b64(value) not in json.dumps(out)
    assert r.counts["secret_data"] == 3  # two values + the copy in kubectl's last-applied annotation
    assert r.text(f"connecting with {value}") == f"connecting with {MASK}"  # learnt from the Secret


def test_env_values_with_secret_names_in_lists_and_lines():
    pod = {"spec": {"containers": [{"env": [{"name": "DB_PASSWORD", "value": "s3cr3t-canary"},
                                            {"name": "API_TOKEN", "value": "tok-canary-123"},
                                            {"name": "HOME", "value": "/home/jovyan"},
                                            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "x",
                                                                                                   "key": "k"}}}]}],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}
    r = Redactor()
    out = r.data(pod)
    env = out["spec"]["containers"][0]["env"]
    assert [e.get("value") for e in env] == [MASK, MASK, "/home/jovyan", None]
    assert env[3]["valueFrom"]["secretKeyRef"] == {"name": "x", "key": "k"}
    assert out["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert r.counts["secret_env"] == 2
    text = ('export DB_PASSWORD="two words"\nAPI_TOKEN=abc123xyz LOG_LEVEL=debug\n'
            'run --token t0k3n-canary --port 80\n{"client_secret": "x\\"y", "user": "bob"}\npassword: hunter22\n')
    red = r.text(text)
    for gone in ("two words", "abc123xyz", "t0k3n-canary", 'x\\"y', "hunter22"):
        assert gone not in red, gone
    for kept in ("LOG_LEVEL=debug", "--port 80", '"user": "bob"', "export DB_PASSWORD=REDACTED"):
        assert kept in red, kept


def test_private_keys_pem_json_escaped_cut_short_and_base64_but_certificates_stay():
    r = Redactor()
    assert KEY_BODY not in r.text("key:\n" + PEM + "after")
    assert r.text("x " + PEM + " y").endswith(" y")
    escaped = json.dumps({"tls.key": PEM})  # one line, \n escapes
    assert KEY_BODY not in r.text(escaped)
    assert KEY_BODY not in r.text("tail of a log: -----BEGIN PRIVATE KEY-----\n" + KEY_BODY[:40])  # no END
    assert b64(PEM) not in r.text("client-key-data: " + b64(PEM))
    assert b64(PEM)[:60] not in r.text(f'"caBundle":"{b64(PEM)}"')
    assert r.counts["private_key"] >= 3 and r.counts["private_key_base64"] >= 2
    assert r.text(CERT) == CERT and r.text(b64(CERT)) == b64(CERT)  # public: expiry is what admins need


def test_kubeconfig_token_and_client_key_data():
    kubeconfig = {"apiVersion": "v1", "kind": "Config",
                  "clusters": [{"name": "microk8s-cluster", "cluster": {"server": "https://10.0.0.1:16443",
                                                                        "certificate-authority-data": b64(CERT)}}],
                  "users": [{"name": "admin", "user": {"token": "kubeconfig-canary-token",
                                                       "client-key-data": b64(PEM)}}]}
    r = Redactor()
    out = r.document(yaml.safe_dump(kubeconfig))
    assert "kubeconfig-canary-token" not in out and b64(PEM)[:40] not in out
    assert "https://10.0.0.1:16443" in out and b64(CERT) in out
    assert r.counts["kubeconfig_credential"] == 2


def test_microk8s_join_strings_and_token_files():
    token = "0123456789abcdef0123456789abcdef"
    r = Redactor()
    out = r.text(f"microk8s join 10.0.0.11:25000/{token}/3f1c2a9b8d7e --worker\n"
                 f"microk8s join [fd00::5]:25000/{token}\nhttp://10.0.0.1:8081/hub/api stays\n")
    assert token not in out and "3f1c2a9b8d7e" not in out and "10.0.0.11:25000/" in out
    assert "http://10.0.0.1:8081/hub/api stays" in out and r.counts["join_token"] == 2
    known = f'{token}-known,admin,admin,"system:masters"\nkubelet-token-xyz1,kubelet-0,kubelet-0,"system:nodes"\n'
    red = r.token_file(known, ",", kind="known_tokens")
    assert red == f'{MASK},admin,admin,"system:masters"\n{MASK},kubelet-0,kubelet-0,"system:nodes"\n'
    assert r.token_file(f"{token}|1767225600\n", "|", kind="cluster_tokens") == f"{MASK}|1767225600\n"
    assert r.text(f"log: used {token}-known") == f"log: used {MASK}"  # learnt from the file


def test_helm_values_secret_keys_and_db_url_passwords():
    values = """
proxy:
  secretToken: "proxy-canary-token-0001"
hub:
  cookieSecret: cookie-canary-secret-02
  db:
    url: postgresql://jhub:db-canary-pw@db.lab:5432/jupyterhub
  config:
    GitHubOAuthenticator:
      client_id: Iv1.public
      client_secret: gh-canary-secret-003
    NativeAuthenticator:
      minimum_password_length: 8
      check_common_password: true
"""
    r = Redactor()
    out = r.document(values)
    for gone in ("proxy-canary-token-0001", "cookie-canary-secret-02", "db-canary-pw", "gh-canary-secret-003"):
        assert gone not in out, gone
    data = yaml.safe_load(out)
    assert data["hub"]["db"]["url"] == f"postgresql://jhub:{MASK}@db.lab:5432/jupyterhub"
    assert data["hub"]["config"]["GitHubOAuthenticator"]["client_id"] == "Iv1.public"
    assert data["hub"]["config"]["NativeAuthenticator"] == {"minimum_password_length": 8,
                                                            "check_common_password": True}
    assert r.counts["secret_field"] == 3 and r.counts["url_password"] == 1
    assert r.text("redis://:only-pw-canary@cache:6379/0") == f"redis://:{MASK}@cache:6379/0"
    assert r.text("see https://docs.example/a:b@c") == "see https://docs.example/a:b@c"  # no user part


def test_literal_settings_in_every_form_and_inside_longer_base64():
    secret = 'Gh/Secret+with "quote" & space'
    r = Redactor({"GITHUB_CLIENT_SECRET": secret})
    forms = [secret, b64(secret), b64(secret).rstrip("="), quote(secret, safe=""), json.dumps(secret)[1:-1],
             b64(secret + "\n")]
    for form in forms:
        out = r.text(f"before {form} after")
        assert out == f"before {MASK} after", (form, out)
    blob = b64(f"config line\nclient_secret_value={secret}\nmore\n")  # misaligned: only decoding finds it
    assert r.text(f"data: {blob}") == f"data: {MASK}"
    assert r.text(f"https://api.example/cb?s={quote(secret, safe='')}&x=1").endswith(f"s={MASK}&x=1")
    assert r.counts["setting:GITHUB_CLIENT_SECRET"] == len(forms) + 2


def test_values_folded_over_yaml_lines_are_found_whole():
    doc = ('data:\n  escaped: "folded-canary-\\\n    0123456789 rest"\n'
           '  plain: words before folded canary\n    0123456789 and after\n')
    assert "folded-canary-0123456789" not in doc and "folded canary 0123456789" not in doc
    r = Redactor({"HUB_DB_URL": "folded-canary-0123456789", "GITHUB_CLIENT_SECRET": "folded canary 0123456789"})
    out = yaml.safe_load(r.document(doc))
    assert out == {"data": {"escaped": f"{MASK} rest", "plain": f"words before {MASK} and after"}}


def test_short_literals_are_not_searched_and_say_so():
    r = Redactor({"NATIVE_ADMIN_PASSWORD": "abc", "GITHUB_CLIENT_SECRET": "long-enough-secret"})
    text = "abc abcdef cabbage " * 10
    assert r.text(text) == text  # a 3-letter secret must not wipe the file
    assert r.report()["too_short_to_search"] == ["NATIVE_ADMIN_PASSWORD"]
    assert r.report()["min_literal_length"] == MIN_LITERAL == 8


def test_harvesting_pass_counts_nothing_and_report_sums():
    r = Redactor()
    r.counting = False
    r.data({"kind": "Secret", "data": {"a": b64("harvested-canary-1")}})
    assert not r.counts
    r.counting = True
    assert r.text("x harvested-canary-1") == f"x {MASK}"
    assert r.report()["total"] == 1 and r.report()["by_kind"] == {"literal": 1}


def test_values_learnt_from_secrets_are_wiped_elsewhere_only_when_distinctive():
    """A Secret holding a user name `postgres` or `jupyterhub` must not wipe that word from the whole bundle;
    a password-like value (digits, mixed case, or 16+ characters) is wiped everywhere."""
    r = Redactor()
    r.data({"kind": "Secret", "data": {"user": b64("postgres"), "db": b64("jupyterhub"),
                                       "password": b64("Tr0ub4dor&3x")}})
    assert r.text("postgres jupyterhub Tr0ub4dor&3x") == f"postgres jupyterhub {MASK}"
    annotations = {"checksum/proxy-secret": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"}
    assert r.data({"metadata": {"annotations": annotations}}) == {"metadata": {"annotations": annotations}}


def test_blobs_in_secrets_are_removed_but_not_searched_for():
    """A Helm release record (base64 of gzip, hundreds of KB) is removed from its Secret; searching for it in every
    file would make a bundle take minutes."""
    r = Redactor()
    out = r.data({"kind": "Secret", "type": "helm.sh/release.v1", "data": {"release": b64("H4sI" + "x1" * 200_000)}})
    assert out["data"] == {"release": MASK} and r.report()["literals_searched"] == 0
