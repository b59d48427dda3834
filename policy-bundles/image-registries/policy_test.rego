package deploylite.run.image_registries_test

import rego.v1

import data.deploylite.run.image_registries

settings := {"allowed": ["docker.io/library", "ghcr.io/acme/", "registry.example.com:5000"]}

# Images as the daemon hands them over (`deploylite policy eval` prints such inputs):
# `reference` as written, `name` the qualified repository, then the tag and the digest.
image(reference, name, tag, digest) := {"reference": reference, "name": name, "tag": tag, "digest": digest}

run(images) := {"gate": "deploylite.run", "plan": {
	"images": [i.reference | some i in images],
	"image_references": images,
}}

alpine := image("alpine:3.20", "docker.io/library/alpine", "3.20", null)

test_official_images_are_allowed if {
	count(image_registries.deny) == 0 with input as run([alpine, image("docker.io/library/rust:1.85", "docker.io/library/rust", "1.85", null)])
		with data.image_registries as settings
}

test_an_allowed_path_prefix_and_a_host_with_a_port_are_allowed if {
	count(image_registries.deny) == 0 with input as run([
		image("ghcr.io/acme/app:1.0", "ghcr.io/acme/app", "1.0", null),
		image("registry.example.com:5000/team/tool:2", "registry.example.com:5000/team/tool", "2", null),
	])
		with data.image_registries as settings
}

test_an_image_of_another_registry_is_denied if {
	image_registries.deny == {"image quay.io/evil/miner:1 is not from an allowed registry (allowed: docker.io/library, ghcr.io/acme/, registry.example.com:5000)"} with input as run([image("quay.io/evil/miner:1", "quay.io/evil/miner", "1", null), alpine])
		with data.image_registries as settings
}

test_a_docker_hub_user_image_is_not_an_official_one if {
	count(image_registries.deny) == 1 with input as run([image("someone/alpine:3", "docker.io/someone/alpine", "3", null)])
		with data.image_registries as settings
}

test_a_prefix_matches_whole_path_components_only if {
	count(image_registries.deny) == 1 with input as run([image("ghcr.io/acme-evil/app:1", "ghcr.io/acme-evil/app", "1", null)])
		with data.image_registries as settings
}

test_unpinned_images_are_warned_about_not_denied if {
	images := [
		image("alpine", "docker.io/library/alpine", null, null),
		image("ghcr.io/acme/app:latest", "ghcr.io/acme/app", "latest", null),
		image("registry.example.com:5000/tool@sha256:0123", "registry.example.com:5000/tool", null, "sha256:0123"),
	]
	image_registries.warn == {
		"image alpine is not pinned to a version: name a tag or a digest",
		"image ghcr.io/acme/app:latest is not pinned to a version: name a tag or a digest",
	} with input as run(images)
		with data.image_registries as settings
	count(image_registries.deny) == 0 with input as run(images)
		with data.image_registries as settings
}

test_a_run_without_images_passes if {
	count(image_registries.deny) == 0 with input as run([])
		with data.image_registries as settings
	count(image_registries.warn) == 0 with input as run([])
		with data.image_registries as settings
}
