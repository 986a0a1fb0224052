-- DHCP leases moved to the appliance's lease journal (data_dir/dhcp-leases):
-- an ACK no longer waits on the database.
DROP TABLE dhcp_leases;
DROP TABLE dhcp_quarantine;
