# Production deploys only from the default branch: a version of a listed environment must be
# a commit of the repository's default branch (not a tag, a feature branch or a pull request).
package deploylite.deploy.default_branch

import rego.v1

deny contains msg if {
	input.environment.name in data.default_branch.environments
	not from_default_branch
	msg := sprintf(
		"environment %s deploys only from the default branch (%v); %s is from %v",
		[input.environment.name, input.repository.default_branch, short(input.commit.sha), where],
	)
}

from_default_branch if {
	input.commit.branch != null
	input.commit.branch == input.repository.default_branch
}

where := sprintf("branch %s", [input.commit.branch]) if {
	input.commit.branch != null
} else := sprintf("tag %s", [input.commit.tag]) if {
	input.commit.tag != null
} else := input.commit.ref

short(sha) := substring(sha, 0, 7)
