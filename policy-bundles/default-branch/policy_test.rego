package deploylite.deploy.default_branch_test

import rego.v1

import data.deploylite.deploy.default_branch

settings := {"environments": ["production"]}

deployment(environment, branch, tag) := {
	"gate": "deploylite.deploy",
	"repository": {"name": "webapp", "default_branch": "main"},
	"commit": {"sha": "0123456789abcdef", "ref": "refs/heads/x", "branch": branch, "tag": tag},
	"environment": {"name": environment},
}

test_production_from_the_default_branch_is_allowed if {
	count(default_branch.deny) == 0 with input as deployment("production", "main", null)
		with data.default_branch as settings
}

test_production_from_a_feature_branch_is_denied if {
	denials := default_branch.deny with input as deployment("production", "feature/x", null)
		with data.default_branch as settings
	denials == {"environment production deploys only from the default branch (main); 0123456 is from branch feature/x"}
}

test_production_from_a_tag_is_denied if {
	some msg in default_branch.deny with input as deployment("production", null, "v1.2.0")
		with data.default_branch as settings
	contains(msg, "from tag v1.2.0")
}

test_other_environments_deploy_from_any_branch if {
	count(default_branch.deny) == 0 with input as deployment("staging", "feature/x", null)
		with data.default_branch as settings
}

test_an_unknown_default_branch_denies if {
	input_without := object.union(deployment("production", "main", null), {"repository": {"name": "webapp", "default_branch": null}})
	count(default_branch.deny) == 1 with input as input_without
		with data.default_branch as settings
}
