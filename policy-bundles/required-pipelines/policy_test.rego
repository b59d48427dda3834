package deploylite.deploy.required_pipelines_test

import rego.v1

import data.deploylite.deploy.required_pipelines

deployment(requires, runs) := {
	"gate": "deploylite.deploy",
	"commit": {"sha": "abcdef0123456789", "runs": runs},
	"environment": {"name": "staging", "requires": requires},
}

none := {"always": []}

test_green_requirements_pass if {
	count(required_pipelines.deny) == 0 with input as deployment(["ci"], [{"pipeline": "ci", "status": "success"}])
		with data.required_pipelines as none
}

test_a_failed_requirement_is_denied if {
	required_pipelines.deny == {"required pipeline ci has not succeeded on abcdef0 (failed)"} with input as deployment(["ci"], [{"pipeline": "ci", "status": "failed"}])
		with data.required_pipelines as none
}

test_a_requirement_without_a_run_is_denied if {
	required_pipelines.deny == {"required pipeline lint has not succeeded on abcdef0 (no run)"} with input as deployment(["lint"], [{"pipeline": "ci", "status": "success"}])
		with data.required_pipelines as none
}

test_pipelines_required_always_count_too if {
	count(required_pipelines.deny) == 1 with input as deployment([], [{"pipeline": "ci", "status": "running"}])
		with data.required_pipelines as {"always": ["ci"]}
}
