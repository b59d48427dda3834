# Only allowed image registries: every image a run pulls (a stage's `image:`, its services')
# must come from a registry (host, optionally with a path) the data allows. An image without
# a registry host comes from docker.io (`alpine` is docker.io/library/alpine). An image
# without a tag or digest, or tagged `latest`, is allowed but warned about.
#
# The daemon splits each image as Docker does (`input.plan.image_references`: registry,
# repository, name, tag, digest), so this compares fields: re-deriving Docker's rules here
# took a dozen string builtins per image, at about 2 µs each, of a 100 µs budget.
package deploylite.run.image_registries

import rego.v1

deny contains msg if {
	some image in input.plan.image_references
	not allowed(image.name)
	msg := sprintf("image %s is not from an allowed registry (allowed: %s)", [image.reference, concat(", ", data.image_registries.allowed)])
}

warn contains msg if {
	some image in input.plan.image_references
	image.digest == null
	image.tag in {null, "latest"}
	msg := sprintf("image %s is not pinned to a version: name a tag or a digest", [image.reference])
}

# `ghcr.io/acme` allows `ghcr.io/acme/app`, not `ghcr.io/acme-evil/app`: a prefix matches
# whole path components.
allowed(name) if {
	some prefix in prefixes
	startswith(name, prefix)
}

prefixes contains concat("", [trim_suffix(prefix, "/"), "/"]) if {
	some prefix in data.image_registries.allowed
}
