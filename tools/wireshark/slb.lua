-- Wireshark / tshark dissector for the CS/DFS message buses (docs/PROTOCOL.md).
--
--   SSMB: per-flow messages over UDP (default port 7700); a datagram holds one message or
--         several back-to-back (batched), each with its own 8-octet header.
--   CSMB: configuration messages over TCP (default port 7701); each message starts with a
--         12-octet header whose msg_length delimits it. Messages split over segments are
--         reassembled; a segment may carry several messages.
--
-- Use:  tshark -X lua_script:tools/wireshark/slb.lua -r capture.pcap -V
-- or copy into ~/.local/lib/wireshark/plugins/. Ports are preferences:
--   -o ssmb.udp_port:7700 -o csmb.tcp_port:7701
-- A length that disagrees with the bytes present is flagged with expert info (filter
-- "_ws.expert" or "ssmb.malformed || csmb.malformed"), never a Lua error.

local SSMB_HEADER_LEN = 8
local CSMB_HEADER_LEN = 12
local VSDEF_FIXED_LEN = 16
local HELLO_FIXED_LEN = 16
local MAX_APP_DATA_LEN = 8192
local MAX_CSMB_LENGTH = 1048576

local ssmb_types = {
    [1] = "QUERY", [2] = "APP_QUERY", [3] = "REPLY", [4] = "DELETE",
    [5] = "REAP", [6] = "STATS", [7] = "NEWFLOW", [8] = "RESET",
}
local ssmb_errors = { [0] = "OK", [1] = "UNKNOWN", [2] = "NOTAVAIL", [3] = "CONNLIMIT", [4] = "CONNALIVE" }
local csmb_types = {
    [1] = "ADD_VS", [2] = "DELETE_VS", [3] = "QUERY_VS", [4] = "VS_LIST",
    [5] = "RESET", [6] = "STATUS", [7] = "HELLO", [8] = "ACK",
}
local csmb_errors = { [0] = "OK", [1] = "VERS_NEW", [2] = "VERS_OBSOLETE" }
local vs_classes = { [1] = "CS_ASSIST", [2] = "DFS_ASSIST" }
local ip_protos = { [1] = "ICMP", [6] = "TCP", [17] = "UDP", [132] = "SCTP" }

-- Body layout per SSMB msg_type: fixed total length, or "app" for APP_QUERY.
local FLOW_LEN, ENDFLOW_LEN, APP_FIXED_LEN = 56, 60, 44
local ssmb_layout = {
    [1] = "flow", [3] = "flow", [5] = "flow", [7] = "flow",
    [2] = "app", [4] = "endflow", [6] = "endflow", [8] = "reset",
}

---------------------------------------------------------------------------------------
-- SSMB

local ssmb = Proto("ssmb", "CS/DFS flow message bus (SSMB)")

local sf = {
    serial_global = ProtoField.uint16("ssmb.serial_global", "Global serial", base.DEC),
    serial_bytype = ProtoField.uint16("ssmb.serial_bytype", "Serial in type", base.DEC),
    msg_type = ProtoField.uint8("ssmb.msg_type", "Message type", base.DEC, ssmb_types),
    count = ProtoField.uint8("ssmb.count", "Messages in datagram", base.DEC),
    error = ProtoField.uint16("ssmb.error", "Error", base.DEC, ssmb_errors),
    orig_src_ipaddr = ProtoField.ipv4("ssmb.orig_src_ipaddr", "Original source address"),
    orig_dst_ipaddr = ProtoField.ipv4("ssmb.orig_dst_ipaddr", "Original destination address"),
    orig_src_port = ProtoField.uint16("ssmb.orig_src_port", "Original source port", base.DEC),
    orig_dst_port = ProtoField.uint16("ssmb.orig_dst_port", "Original destination port", base.DEC),
    tos = ProtoField.uint8("ssmb.tos", "Type of service", base.HEX),
    proto = ProtoField.uint8("ssmb.proto", "Protocol", base.DEC, ip_protos),
    flags = ProtoField.uint8("ssmb.flags", "Flags", base.HEX),
    flag_outbound = ProtoField.bool("ssmb.flags.outbound", "OUTBOUND", 8, nil, 0x01),
    flag_add_tcp_offset = ProtoField.bool("ssmb.flags.add_tcp_offset", "ADD_TCP_OFFSET", 8, nil, 0x02),
    tcp_flags = ProtoField.uint8("ssmb.tcp_flags", "TCP flags", base.HEX),
    tcp_fin = ProtoField.bool("ssmb.tcp_flags.fin", "FIN", 8, nil, 0x01),
    tcp_syn = ProtoField.bool("ssmb.tcp_flags.syn", "SYN", 8, nil, 0x02),
    tcp_rst = ProtoField.bool("ssmb.tcp_flags.rst", "RST", 8, nil, 0x04),
    tcp_psh = ProtoField.bool("ssmb.tcp_flags.psh", "PSH", 8, nil, 0x08),
    tcp_ack = ProtoField.bool("ssmb.tcp_flags.ack", "ACK", 8, nil, 0x10),
    tcp_urg = ProtoField.bool("ssmb.tcp_flags.urg", "URG", 8, nil, 0x20),
    tcp_ece = ProtoField.bool("ssmb.tcp_flags.ece", "ECE", 8, nil, 0x40),
    tcp_cwr = ProtoField.bool("ssmb.tcp_flags.cwr", "CWR", 8, nil, 0x80),
    new_dst_ipaddr = ProtoField.ipv4("ssmb.new_dst_ipaddr", "New destination address"),
    new_dst_port = ProtoField.uint16("ssmb.new_dst_port", "New destination port", base.DEC),
    pad = ProtoField.uint16("ssmb.pad", "Padding", base.HEX),
    next_hop_ipaddr = ProtoField.ipv4("ssmb.next_hop_ipaddr", "Next hop address"),
    svr_seq_offset = ProtoField.uint32("ssmb.svr_seq_offset", "Server sequence offset", base.DEC),
    svr_ack_offset = ProtoField.uint32("ssmb.svr_ack_offset", "Server acknowledgement offset", base.DEC),
    client_seq_offset = ProtoField.uint32("ssmb.client_seq_offset", "Client sequence offset", base.DEC),
    client_ack_offset = ProtoField.uint32("ssmb.client_ack_offset", "Client acknowledgement offset", base.DEC),
    flow_id = ProtoField.uint32("ssmb.flow_id", "Flow id", base.HEX),
    app_data_len = ProtoField.uint16("ssmb.app_data_len", "Application data length", base.DEC),
    app_data = ProtoField.bytes("ssmb.app_data", "Application data"),
    inbound_bytes = ProtoField.uint64("ssmb.inbound_bytes", "Inbound bytes", base.DEC),
    outbound_bytes = ProtoField.uint64("ssmb.outbound_bytes", "Outbound bytes", base.DEC),
    inbound_pkts = ProtoField.uint64("ssmb.inbound_pkts", "Inbound packets", base.DEC),
    outbound_pkts = ProtoField.uint64("ssmb.outbound_pkts", "Outbound packets", base.DEC),
}
local sf_list = {}
for _, f in pairs(sf) do sf_list[#sf_list + 1] = f end
ssmb.fields = sf_list

local se = {
    malformed = ProtoExpert.new("ssmb.malformed", "Malformed SSMB message",
        expert.group.MALFORMED, expert.severity.ERROR),
    count_mismatch = ProtoExpert.new("ssmb.count_mismatch", "SSMB count disagrees with the datagram",
        expert.group.PROTOCOL, expert.severity.WARN),
    unknown_type = ProtoExpert.new("ssmb.unknown_type", "Unknown SSMB message type",
        expert.group.UNDECODED, expert.severity.WARN),
    nonzero_pad = ProtoExpert.new("ssmb.nonzero_pad", "SSMB padding is not zero",
        expert.group.PROTOCOL, expert.severity.NOTE),
}
ssmb.experts = { se.malformed, se.count_mismatch, se.unknown_type, se.nonzero_pad }

local function add_pad(tree, field, range, ef)
    local item = tree:add(field, range)
    if range:uint() ~= 0 then item:add_proto_expert_info(ef) end
end

local function add_flow_tuple(t, tvb, off)
    t:add(sf.orig_src_ipaddr, tvb(off + 8, 4))
    t:add(sf.orig_dst_ipaddr, tvb(off + 12, 4))
    t:add(sf.orig_src_port, tvb(off + 16, 2))
    t:add(sf.orig_dst_port, tvb(off + 18, 2))
    t:add(sf.tos, tvb(off + 20, 1))
    t:add(sf.proto, tvb(off + 21, 1))
    local ft = t:add(sf.flags, tvb(off + 22, 1))
    ft:add(sf.flag_outbound, tvb(off + 22, 1))
    ft:add(sf.flag_add_tcp_offset, tvb(off + 22, 1))
    local tt = t:add(sf.tcp_flags, tvb(off + 23, 1))
    for _, name in ipairs({ "tcp_fin", "tcp_syn", "tcp_rst", "tcp_psh", "tcp_ack", "tcp_urg", "tcp_ece", "tcp_cwr" }) do
        tt:add(sf[name], tvb(off + 23, 1))
    end
end

local function flow_summary(tvb, off)
    return string.format("%s:%d -> %s:%d",
        tostring(tvb(off + 8, 4):ipv4()), tvb(off + 16, 2):uint(),
        tostring(tvb(off + 12, 4):ipv4()), tvb(off + 18, 2):uint())
end

-- Dissects one SSMB message at off; returns the offset after it, or nil to stop.
local function dissect_ssmb_message(tvb, pinfo, tree, off, index, summaries)
    local remaining = tvb:len() - off
    if remaining < SSMB_HEADER_LEN then
        local item = tree:add(ssmb, tvb(off, remaining), "SSMB (truncated header)")
        item:add_proto_expert_info(se.malformed,
            string.format("truncated: header needs %d octets, got %d", SSMB_HEADER_LEN, remaining))
        summaries[#summaries + 1] = "[truncated]"
        return nil
    end
    local msg_type = tvb(off + 4, 1):uint()
    local type_name = ssmb_types[msg_type] or string.format("type %d", msg_type)
    local layout = ssmb_layout[msg_type]
    local need
    if layout == "flow" then
        need = FLOW_LEN
    elseif layout == "endflow" then
        need = ENDFLOW_LEN
    elseif layout == "reset" then
        need = SSMB_HEADER_LEN
    elseif layout == "app" then
        need = APP_FIXED_LEN
        if remaining >= APP_FIXED_LEN then
            need = APP_FIXED_LEN + tvb(off + 42, 2):uint()
        end
    else
        need = remaining -- unknown type: the rest cannot be split reliably
    end
    local have = math.min(need, remaining)
    local t = tree:add(ssmb, tvb(off, have))
    t:append_text(string.format(", %s", type_name))
    if index > 1 then t:append_text(string.format(" (message %d)", index)) end
    t:add(sf.serial_global, tvb(off, 2))
    t:add(sf.serial_bytype, tvb(off + 2, 2))
    local type_item = t:add(sf.msg_type, tvb(off + 4, 1))
    t:add(sf.count, tvb(off + 5, 1))
    t:add(sf.error, tvb(off + 6, 2))

    if layout == nil then
        type_item:add_proto_expert_info(se.unknown_type)
        summaries[#summaries + 1] = type_name
        return nil
    end
    if remaining < need then
        t:add_proto_expert_info(se.malformed,
            string.format("truncated: %s message needs %d octets, got %d", type_name, need, remaining))
        summaries[#summaries + 1] = type_name .. " [truncated]"
        return nil
    end

    local summary = type_name
    if layout == "flow" then
        add_flow_tuple(t, tvb, off)
        t:add(sf.new_dst_ipaddr, tvb(off + 24, 4))
        t:add(sf.new_dst_port, tvb(off + 28, 2))
        add_pad(t, sf.pad, tvb(off + 30, 2), se.nonzero_pad)
        t:add(sf.next_hop_ipaddr, tvb(off + 32, 4))
        t:add(sf.svr_seq_offset, tvb(off + 36, 4))
        t:add(sf.svr_ack_offset, tvb(off + 40, 4))
        t:add(sf.client_seq_offset, tvb(off + 44, 4))
        t:add(sf.client_ack_offset, tvb(off + 48, 4))
        t:add(sf.flow_id, tvb(off + 52, 4))
        summary = string.format("%s flow=0x%08x %s", type_name, tvb(off + 52, 4):uint(), flow_summary(tvb, off))
        if msg_type == 3 then
            summary = summary .. string.format(" => %s:%d",
                tostring(tvb(off + 24, 4):ipv4()), tvb(off + 28, 2):uint())
        end
    elseif layout == "app" then
        add_flow_tuple(t, tvb, off)
        t:add(sf.new_dst_ipaddr, tvb(off + 24, 4))
        t:add(sf.new_dst_port, tvb(off + 28, 2))
        add_pad(t, sf.pad, tvb(off + 30, 2), se.nonzero_pad)
        t:add(sf.next_hop_ipaddr, tvb(off + 32, 4))
        t:add(sf.flow_id, tvb(off + 36, 4))
        add_pad(t, sf.pad, tvb(off + 40, 2), se.nonzero_pad)
        local len_item = t:add(sf.app_data_len, tvb(off + 42, 2))
        local app_len = tvb(off + 42, 2):uint()
        if app_len > MAX_APP_DATA_LEN then
            len_item:add_proto_expert_info(se.malformed,
                string.format("app_data_len %d exceeds the maximum %d", app_len, MAX_APP_DATA_LEN))
        end
        if app_len > 0 then t:add(sf.app_data, tvb(off + 44, app_len)) end
        summary = string.format("%s flow=0x%08x %s app_data=%d", type_name, tvb(off + 36, 4):uint(),
            flow_summary(tvb, off), app_len)
    elseif layout == "endflow" then
        add_flow_tuple(t, tvb, off)
        t:add(sf.inbound_bytes, tvb(off + 24, 8))
        t:add(sf.outbound_bytes, tvb(off + 32, 8))
        t:add(sf.inbound_pkts, tvb(off + 40, 8))
        t:add(sf.outbound_pkts, tvb(off + 48, 8))
        t:add(sf.flow_id, tvb(off + 56, 4))
        summary = string.format("%s flow=0x%08x %s", type_name, tvb(off + 56, 4):uint(), flow_summary(tvb, off))
    end
    local err = tvb(off + 6, 2):uint()
    if err ~= 0 then
        summary = summary .. " error=" .. (ssmb_errors[err] or tostring(err))
    end
    summaries[#summaries + 1] = summary
    return off + need
end

function ssmb.dissector(tvb, pinfo, tree)
    local total = tvb:len()
    if total == 0 then return 0 end
    pinfo.cols.protocol = "SSMB"
    local summaries = {}
    local off, index = 0, 0
    local counts = {}
    local complete = true
    while off < total do
        index = index + 1
        if total - off >= 6 then counts[#counts + 1] = tvb(off + 5, 1):uint() end
        local nxt = dissect_ssmb_message(tvb, pinfo, tree, off, index, summaries)
        if nxt == nil then
            complete = false -- already flagged; counting further would only add noise
            break
        end
        off = nxt
    end
    if complete then
        for _, declared in ipairs(counts) do
            if declared ~= index then
                local item = tree:add(ssmb, tvb(0, total), "SSMB datagram")
                item:add_proto_expert_info(se.count_mismatch,
                    string.format("count says %d message(s), datagram holds %d", declared, index))
                break
            end
        end
    end
    if index > 1 then
        pinfo.cols.info = string.format("SSMB batch of %d: %s", index, table.concat(summaries, "; "))
    else
        pinfo.cols.info = "SSMB " .. table.concat(summaries, "; ")
    end
    return total
end

---------------------------------------------------------------------------------------
-- CSMB

local csmb = Proto("csmb", "CS/DFS configuration message bus (CSMB)")

local vs_flag_names = {
    "translate_addr", "translate_port", "route_by_dst_ip", "redundant", "wildcard_addr",
    "wildcard_port", "noarp_mode", "app_proxy", "ssl_proxy", "cookie_proxy", "http_proxy", "raw_proxy",
}

local cf = {
    serial_global = ProtoField.uint16("csmb.serial_global", "Global serial", base.DEC),
    serial_bytype = ProtoField.uint16("csmb.serial_bytype", "Serial in type", base.DEC),
    msg_length = ProtoField.uint32("csmb.msg_length", "Message length", base.DEC),
    msg_type = ProtoField.uint8("csmb.msg_type", "Message type", base.DEC, csmb_types),
    pad = ProtoField.uint8("csmb.pad", "Padding", base.HEX),
    error = ProtoField.uint16("csmb.error", "Error", base.DEC, csmb_errors),
    vs = ProtoField.none("csmb.vs", "Virtual server"),
    flags = ProtoField.uint32("csmb.flags", "Flags", base.HEX),
    virt_ipaddr = ProtoField.ipv4("csmb.virt_ipaddr", "Virtual address"),
    virt_port = ProtoField.uint16("csmb.virt_port", "Virtual port", base.DEC),
    vs_class = ProtoField.uint8("csmb.vs_class", "Virtual server class", base.DEC, vs_classes),
    proto = ProtoField.uint8("csmb.proto", "Protocol", base.DEC, ip_protos),
    vs_pad = ProtoField.uint16("csmb.vs_pad", "Padding", base.HEX),
    app_data_len = ProtoField.uint16("csmb.app_data_len", "Application data length", base.DEC),
    app_data = ProtoField.bytes("csmb.app_data", "Application data"),
    app_data_pad = ProtoField.bytes("csmb.app_data_pad", "Alignment padding"),
    pool_ipaddr = ProtoField.ipv4("csmb.pool.ipaddr", "Real server address"),
    pool_port = ProtoField.uint16("csmb.pool.port", "Real server port", base.DEC),
    pool_weight = ProtoField.uint16("csmb.pool.weight", "Real server weight", base.DEC),
    ssmb_active_ipaddr = ProtoField.ipv4("csmb.ssmb_active_ipaddr", "SSMB active address"),
    ssmb_standby_ipaddr = ProtoField.ipv4("csmb.ssmb_standby_ipaddr", "SSMB standby address"),
    vers_major = ProtoField.uint8("csmb.vers_major", "Major version", base.DEC),
    vers_minor = ProtoField.uint8("csmb.vers_minor", "Minor version", base.DEC),
    ssmb_port = ProtoField.uint16("csmb.ssmb_port", "SSMB port", base.DEC),
    auth_data_len = ProtoField.uint16("csmb.auth_data_len", "Authentication data length", base.DEC),
    auth_data = ProtoField.bytes("csmb.auth_data", "Authentication data"),
    status = ProtoField.uint32("csmb.status", "Status", base.HEX),
    trailing = ProtoField.bytes("csmb.trailing", "Unexpected trailing bytes"),
}
local flag_fields = {}
for bit, name in ipairs(vs_flag_names) do
    local f = ProtoField.bool("csmb.flags." .. name, string.upper(name), 32, nil, bit32.lshift(1, bit - 1))
    flag_fields[#flag_fields + 1] = f
end
local cf_list = {}
for _, f in pairs(cf) do cf_list[#cf_list + 1] = f end
for _, f in ipairs(flag_fields) do cf_list[#cf_list + 1] = f end
csmb.fields = cf_list

local ce = {
    malformed = ProtoExpert.new("csmb.malformed", "Malformed CSMB message",
        expert.group.MALFORMED, expert.severity.ERROR),
    unknown_type = ProtoExpert.new("csmb.unknown_type", "Unknown CSMB message type",
        expert.group.UNDECODED, expert.severity.WARN),
    trailing = ProtoExpert.new("csmb.trailing_bytes", "Bytes after the message body",
        expert.group.PROTOCOL, expert.severity.WARN),
}
csmb.experts = { ce.malformed, ce.unknown_type, ce.trailing }

local function add_vs_flags(tree, range)
    local item = tree:add(cf.flags, range)
    for _, f in ipairs(flag_fields) do item:add(f, range) end
    local set = {}
    local value = range:uint()
    for bit, name in ipairs(vs_flag_names) do
        if bit32.band(value, bit32.lshift(1, bit - 1)) ~= 0 then set[#set + 1] = string.upper(name) end
    end
    if #set > 0 then item:append_text(" (" .. table.concat(set, ", ") .. ")") end
end

-- Dissects one VS definition in [off, limit); returns the offset after it, or nil.
local function dissect_vsdef(tvb, tree, off, limit, index)
    local remaining = limit - off
    if remaining < VSDEF_FIXED_LEN then
        local item = tree:add(cf.vs, tvb(off, remaining))
        item:add_proto_expert_info(ce.malformed,
            string.format("truncated: virtual server definition needs %d octets, got %d", VSDEF_FIXED_LEN, remaining))
        return nil
    end
    local app_len = tvb(off + 14, 2):uint()
    local padded = app_len + (-app_len % 4)
    local need = VSDEF_FIXED_LEN + padded
    local t = tree:add(cf.vs, tvb(off, math.min(need, remaining)))
    t:append_text(string.format(" %s:%d", tostring(tvb(off + 4, 4):ipv4()), tvb(off + 8, 2):uint()))
    if index then t:append_text(string.format(" (#%d)", index)) end
    add_vs_flags(t, tvb(off, 4))
    t:add(cf.virt_ipaddr, tvb(off + 4, 4))
    t:add(cf.virt_port, tvb(off + 8, 2))
    local class = tvb(off + 10, 1):uint()
    t:add(cf.vs_class, tvb(off + 10, 1))
    t:add(cf.proto, tvb(off + 11, 1))
    t:add(cf.vs_pad, tvb(off + 12, 2))
    local len_item = t:add(cf.app_data_len, tvb(off + 14, 2))
    if remaining < VSDEF_FIXED_LEN + app_len then
        len_item:add_proto_expert_info(ce.malformed,
            string.format("truncated: app_data_len %d but only %d octets left", app_len, remaining - VSDEF_FIXED_LEN))
        return nil
    end
    if app_len > 0 then
        local data = tvb(off + 16, app_len)
        local dt = t:add(cf.app_data, data)
        if class == 2 then
            if app_len % 8 ~= 0 then
                dt:add_proto_expert_info(ce.malformed,
                    string.format("DFS_ASSIST pool of %d octets is not a whole number of 8-octet entries", app_len))
            else
                for e = 0, app_len - 8, 8 do
                    dt:add(cf.pool_ipaddr, tvb(off + 16 + e, 4))
                    dt:add(cf.pool_port, tvb(off + 20 + e, 2))
                    dt:add(cf.pool_weight, tvb(off + 22 + e, 2))
                end
            end
        end
    end
    if remaining < need then
        t:add_proto_expert_info(ce.malformed,
            string.format("truncated: alignment padding needs %d octets, got %d",
                padded - app_len, remaining - VSDEF_FIXED_LEN - app_len))
        return nil
    end
    if padded > app_len then t:add(cf.app_data_pad, tvb(off + 16 + app_len, padded - app_len)) end
    return off + need
end

local function flag_trailing(tree, tvb, off, limit)
    if limit > off then
        local item = tree:add(cf.trailing, tvb(off, limit - off))
        item:add_proto_expert_info(ce.trailing, string.format("%d octet(s) after the message body", limit - off))
    end
end

-- Dissects one whole CSMB message (the PDU tvb); returns its summary.
local function dissect_csmb_message(tvb, pinfo, tree)
    local have = tvb:len()
    local t = tree:add(csmb, tvb(0, have))
    local msg_type = tvb(8, 1):uint()
    local type_name = csmb_types[msg_type] or string.format("type %d", msg_type)
    t:append_text(", " .. type_name)
    t:add(cf.serial_global, tvb(0, 2))
    t:add(cf.serial_bytype, tvb(2, 2))
    local len_item = t:add(cf.msg_length, tvb(4, 4))
    local type_item = t:add(cf.msg_type, tvb(8, 1))
    t:add(cf.pad, tvb(9, 1))
    t:add(cf.error, tvb(10, 2))
    local msg_length = tvb(4, 4):uint()
    if msg_length < CSMB_HEADER_LEN or msg_length > MAX_CSMB_LENGTH then
        len_item:add_proto_expert_info(ce.malformed,
            string.format("msg_length %d outside %d..%d", msg_length, CSMB_HEADER_LEN, MAX_CSMB_LENGTH))
        return type_name .. " [bad length]"
    end
    local limit = math.min(msg_length, have)
    if have < msg_length then
        len_item:add_proto_expert_info(ce.malformed,
            string.format("truncated: message needs %d octets, got %d", msg_length, have))
    end
    local summary = type_name
    local off = CSMB_HEADER_LEN
    if msg_type == 1 or msg_type == 2 or (msg_type == 3 and limit > off) then
        local nxt = dissect_vsdef(tvb, t, off, limit, nil)
        if nxt ~= nil then
            summary = string.format("%s %s:%d", type_name, tostring(tvb(off + 4, 4):ipv4()), tvb(off + 8, 2):uint())
            flag_trailing(t, tvb, nxt, limit)
        end
    elseif msg_type == 3 then
        summary = type_name .. " (all)"
    elseif msg_type == 4 then
        local n = 0
        while off < limit do
            n = n + 1
            off = dissect_vsdef(tvb, t, off, limit, n)
            if off == nil then break end
        end
        summary = string.format("%s of %d", type_name, n)
    elseif msg_type == 6 then
        if limit - off < 4 then
            t:add_proto_expert_info(ce.malformed,
                string.format("truncated: STATUS needs %d octets, got %d", CSMB_HEADER_LEN + 4, limit))
        else
            t:add(cf.status, tvb(off, 4))
            summary = string.format("%s 0x%08x", type_name, tvb(off, 4):uint())
            flag_trailing(t, tvb, off + 4, limit)
        end
    elseif msg_type == 7 then
        if limit - off < HELLO_FIXED_LEN then
            t:add_proto_expert_info(ce.malformed,
                string.format("truncated: HELLO needs %d octets, got %d", CSMB_HEADER_LEN + HELLO_FIXED_LEN, limit))
        else
            t:add(cf.ssmb_active_ipaddr, tvb(off, 4))
            t:add(cf.ssmb_standby_ipaddr, tvb(off + 4, 4))
            add_vs_flags(t, tvb(off + 8, 4))
            t:add(cf.vers_major, tvb(off + 12, 1))
            t:add(cf.vers_minor, tvb(off + 13, 1))
            t:add(cf.ssmb_port, tvb(off + 14, 2))
            summary = string.format("%s v%d.%d ssmb=%s:%d", type_name, tvb(off + 12, 1):uint(),
                tvb(off + 13, 1):uint(), tostring(tvb(off, 4):ipv4()), tvb(off + 14, 2):uint())
            off = off + HELLO_FIXED_LEN
            if limit - off == 1 then
                flag_trailing(t, tvb, off, limit)
            elseif limit - off >= 2 then
                local auth_len = tvb(off, 2):uint()
                local auth_item = t:add(cf.auth_data_len, tvb(off, 2))
                off = off + 2
                if limit - off < auth_len then
                    auth_item:add_proto_expert_info(ce.malformed,
                        string.format("truncated: auth_data_len %d but only %d octets left", auth_len, limit - off))
                else
                    if auth_len > 0 then t:add(cf.auth_data, tvb(off, auth_len)) end
                    summary = summary .. " auth"
                    flag_trailing(t, tvb, off + auth_len, limit)
                end
            end
        end
    elseif msg_type == 5 or msg_type == 8 then
        flag_trailing(t, tvb, off, limit)
    else
        type_item:add_proto_expert_info(ce.unknown_type)
    end
    local err = tvb(10, 2):uint()
    if err ~= 0 then summary = summary .. " error=" .. (csmb_errors[err] or tostring(err)) end
    return summary
end

local csmb_summaries = {}

local function csmb_pdu_len(tvb, pinfo, offset)
    local length = tvb(offset + 4, 4):uint()
    if length < CSMB_HEADER_LEN then
        return CSMB_HEADER_LEN -- consume the header so the stream keeps moving; flagged later
    end
    if length > MAX_CSMB_LENGTH then
        return tvb:len() - offset -- never wait for an impossible length
    end
    return length
end

local function csmb_pdu(tvb, pinfo, tree)
    csmb_summaries[#csmb_summaries + 1] = dissect_csmb_message(tvb, pinfo, tree)
    return tvb:len()
end

function csmb.dissector(tvb, pinfo, tree)
    if tvb:len() == 0 then return 0 end
    csmb_summaries = {}
    local consumed = dissect_tcp_pdus(tvb, tree, CSMB_HEADER_LEN, csmb_pdu_len, csmb_pdu, true)
    if #csmb_summaries > 0 then
        pinfo.cols.protocol = "CSMB"
        local text = table.concat(csmb_summaries, "; ")
        -- After a reassembled PDU, TCP fences the column and calls again for the rest of
        -- the segment: continue the list instead of gluing a second "CSMB" onto it.
        if string.find(tostring(pinfo.cols.info), "^CSMB ") then
            pinfo.cols.info:append("; " .. text)
        else
            pinfo.cols.info = "CSMB " .. text
        end
    end
    return consumed
end

---------------------------------------------------------------------------------------
-- Registration, with the ports as preferences (-o ssmb.udp_port:N -o csmb.tcp_port:N).

ssmb.prefs.udp_port = Pref.uint("UDP port", 7700, "UDP port of the SSMB (both directions)")
csmb.prefs.tcp_port = Pref.uint("TCP port", 7701, "TCP port of the CSMB (both directions)")

local registered_udp, registered_tcp = nil, nil

local function register_ports()
    local udp_table = DissectorTable.get("udp.port")
    local tcp_table = DissectorTable.get("tcp.port")
    if registered_udp ~= ssmb.prefs.udp_port then
        if registered_udp then udp_table:remove(registered_udp, ssmb) end
        registered_udp = ssmb.prefs.udp_port
        udp_table:add(registered_udp, ssmb)
    end
    if registered_tcp ~= csmb.prefs.tcp_port then
        if registered_tcp then tcp_table:remove(registered_tcp, csmb) end
        registered_tcp = csmb.prefs.tcp_port
        tcp_table:add(registered_tcp, csmb)
    end
end

ssmb.prefs_changed = register_ports
csmb.prefs_changed = register_ports
register_ports()
