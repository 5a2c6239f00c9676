"""Writes an OCI image layout (a directory skopeo reads as oci:DIR:TAG) with
LAYERS gzip-compressed tar layers, each holding SIZE random bytes, so that
the image is incompressible and skopeo copies its layers as they are.

usage: mklayout.py DIR LAYERS SIZE [SEED]   (prints the manifest's digest)
"""
import gzip, hashlib, io, json, os, random, sys, tarfile

out, layers, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(sys.argv[4] if len(sys.argv) > 4 else None)
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)


def blob(data):
    d = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{d}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


descs, diffs = [], []
for i in range(layers):
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.GNU_FORMAT) as t:
        payload = rng.randbytes(size)
        info = tarfile.TarInfo(f"layer{i}/data.bin")
        info.size, info.mtime = len(payload), 0
        t.addfile(info, io.BytesIO(payload))
    diffs.append("sha256:" + hashlib.sha256(tar.getvalue()).hexdigest())
    d = blob(gzip.compress(tar.getvalue(), compresslevel=1, mtime=0))
    descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **d})
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
c = blob(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **c},
                       "layers": descs}).encode()
m = blob(manifest)
with open(f"{out}/oci-layout", "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(f"{out}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
               "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
print(m["digest"])
