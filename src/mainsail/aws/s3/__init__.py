"""S3 on the control port: the REST/XML API (api, listing, multipart, wire), its routes, and the store."""
