module dynamo-e2e/agent

go 1.22
