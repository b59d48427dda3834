# Only allowed image registries: every image a run pulls (a stage's `image:`, its services')
# must come from a registry (host, optionally with a path) the data allows. An image without
# a registry host comes from docker.io (`alpine` is docker.io/library/alpine). An image
# without a tag or digest, or tagged `latest`, is allowed but warned about.
package deploylite.run.image_registries

import rego.v1

deny contains msg if {
	some image in input.plan.images
	not allowed[image]
	msg := sprintf("image %s is not from an allowed registry (allowed: %s)", [image, concat(", ", data.image_registries.allowed)])
}

warn contains msg if {
	some image in input.plan.images
	not pinned[image]
	msg := sprintf("image %s is not pinned to a version: name a tag or a digest", [image])
}

# The helpers below are rules over all the plan's images, not functions of one image:
# regorus evaluates a rule once per decision but enters a function anew at every call, at
# a few microseconds each, and a decision has a budget of 100 µs.

allowed contains image if {
	some image, name in qualified
	some prefix in prefixes
	startswith(name, prefix)
}

# Each allowed registry as a prefix of whole path components: `ghcr.io/acme/`.
prefixes contains concat("", [trim_suffix(prefix, "/"), "/"]) if {
	some prefix in data.image_registries.allowed
}

# Each image's fully qualified name.
qualified[image] := image if some image in with_registry

qualified[image] := concat("/", ["docker.io/library", image]) if {
	some image in input.plan.images
	not with_registry[image]
	not contains(image, "/")
}

qualified[image] := concat("/", ["docker.io", image]) if {
	some image in input.plan.images
	not with_registry[image]
	contains(image, "/")
}

# Images whose first path component names a registry host: it has a `.` or a `:`, or it is
# `localhost` (and more components follow).
with_registry contains image if {
	some image, first in first_component
	contains(first, ".")
}

with_registry contains image if {
	some image, first in first_component
	contains(first, ":")
}

with_registry contains image if {
	some image, first in first_component
	first == "localhost"
}

first_component[image] := parts[0] if {
	some image in input.plan.images
	parts := split(image, "/")
	count(parts) > 1
}

# A tag is after the last `:` of the last path component; a digest after `@`.
pinned contains image if {
	some image in input.plan.images
	contains(image, "@")
}

pinned contains image if {
	some image in input.plan.images
	not contains(image, "@")
	parts := split(image, "/")
	name := parts[count(parts) - 1]
	contains(name, ":")
	not endswith(name, ":latest")
}
