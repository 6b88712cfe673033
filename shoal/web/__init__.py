"""The web view (`shoal daemon --web-addr`): a page of the cluster served from the installed package, fed live
over Server-Sent Events, with the operator's actions. Every read and action goes through the node's own Engine
API socket, as the docker CLI's requests do: the same handlers, validation, leader forwarding and events."""
