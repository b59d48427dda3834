package deploylite.deploy.trusted_only_test

import rego.v1

import data.deploylite.deploy.trusted_only

deployment(trusted, pull_request) := {
	"gate": "deploylite.deploy",
	"commit": {"sha": "feedbeef00000000"},
	"trigger": {"event": "pull_request", "trusted": trusted, "pull_request": pull_request},
}

test_trusted_code_deploys if {
	count(trusted_only.deny) == 0 with input as deployment(true, null)
}

test_a_fork_pull_request_is_denied if {
	trusted_only.deny == {"untrusted code (pull request #7 from mallory/webapp) never gets a deployment"} with input as deployment(false, {"number": 7, "head_repo": "mallory/webapp"})
}

test_untrusted_code_without_a_pull_request_is_denied if {
	trusted_only.deny == {"untrusted code (commit feedbee) never gets a deployment"} with input as deployment(false, null)
}
