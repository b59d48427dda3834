# Required pipelines must be green: every pipeline the environment `requires:` (and those this
# bundle's data requires of every deployment) must have succeeded on the version deployed.
package deploylite.deploy.required_pipelines

import rego.v1

required contains name if some name in input.environment.requires

required contains name if some name in data.required_pipelines.always

deny contains msg if {
	some name in required
	not succeeded(name)
	msg := sprintf("required pipeline %s has not succeeded on %s (%s)", [name, substring(input.commit.sha, 0, 7), state(name)])
}

succeeded(name) if {
	some run in input.commit.runs
	run.pipeline == name
	run.status == "success"
}

# `commit.runs` holds each pipeline's latest run: one status per pipeline.
state(name) := run.status if {
	some run in input.commit.runs
	run.pipeline == name
} else := "no run"
