# Only allowed image registries: every image a run pulls (a stage's `image:`, its services')
# must come from a registry (host, optionally with a path) the data allows. An image without
# a registry host comes from docker.io (`alpine` is docker.io/library/alpine). An image
# without a tag or digest, or tagged `latest`, is allowed but warned about.
package deploylite.run.image_registries

import rego.v1

deny contains msg if {
	some image in input.plan.images
	not allowed(image)
	msg := sprintf("image %s is not from an allowed registry (allowed: %s)", [image, concat(", ", data.image_registries.allowed)])
}

warn contains msg if {
	some image in input.plan.images
	not pinned(image)
	msg := sprintf("image %s is not pinned to a version: name a tag or a digest", [image])
}

allowed(image) if {
	some prefix in data.image_registries.allowed
	startswith(qualified(image), concat("", [trim_suffix(prefix, "/"), "/"]))
}

qualified(image) := image if has_registry(image)

qualified(image) := concat("/", ["docker.io/library", image]) if {
	not has_registry(image)
	not contains(image, "/")
}

qualified(image) := concat("/", ["docker.io", image]) if {
	not has_registry(image)
	contains(image, "/")
}

has_registry(image) if {
	parts := split(image, "/")
	count(parts) > 1
	registry_host(parts[0])
}

registry_host(first) if contains(first, ".")

registry_host(first) if contains(first, ":")

registry_host(first) if first == "localhost"

# A tag is after the last `:` of the last path component; a digest after `@`.
pinned(image) if contains(image, "@")

pinned(image) if {
	not contains(image, "@")
	parts := split(image, "/")
	name := parts[count(parts) - 1]
	contains(name, ":")
	not endswith(name, ":latest")
}
