# No untrusted run gets a deployment: code from a fork whose author is not a member of the
# repository is never deployed, approved or not.
package deploylite.deploy.trusted_only

import rego.v1

deny contains msg if {
	input.trigger.trusted == false
	msg := sprintf("untrusted code (%s) never gets a deployment", [origin])
}

origin := sprintf("pull request #%d from %s", [input.trigger.pull_request.number, input.trigger.pull_request.head_repo]) if {
	input.trigger.pull_request != null
} else := sprintf("commit %s", [substring(input.commit.sha, 0, 7)])
